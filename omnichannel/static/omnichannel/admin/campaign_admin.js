// The campaign page: show the chosen trigger's options, the fields of the campaign's kind, and
// number the step rows added with "Add another step". Without JavaScript everything is shown.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
    const trigger = document.querySelector("select.oc-trigger");
    const kind = document.querySelector("select.oc-kind");

    const showTriggerOptions = function () {
        if (!trigger) {
            return;
        }
        document.querySelectorAll(".oc-trigger-doc").forEach(function (doc) {
            doc.hidden = doc.dataset.trigger !== trigger.value;
        });
    };

    // Rows of the other kind are hidden, unless they carry an error to fix.
    const setVisible = function (element, visible) {
        if (element && !element.classList.contains("errors")) {
            element.hidden = !visible;
        }
    };
    const showKindFields = function () {
        if (!kind) {
            return;
        }
        const mass = kind.value === "mass";
        setVisible(document.querySelector(".form-row.field-trigger"), !mass);
        setVisible(document.querySelector(".form-row.field-trigger_options"), !mass);
        setVisible(document.querySelector(".form-row.field-reenroll_after"), !mass);
        const massFieldset = document.querySelector("fieldset.oc-mass");
        if (massFieldset && !massFieldset.querySelector(".errors")) {
            massFieldset.hidden = !mass;
        }
    };

    if (trigger) {
        trigger.addEventListener("change", showTriggerOptions);
        showTriggerOptions();
    }
    if (kind) {
        kind.addEventListener("change", showKindFields);
        showKindFields();
    }

    // A new step row takes the next position after the highest one on the page.
    document.addEventListener("formset:added", function (event) {
        if (!event.detail || event.detail.formsetName !== "steps") {
            return;
        }
        let highest = 0;
        document.querySelectorAll('input.oc-position[name^="steps-"]').forEach(function (input) {
            if (input !== event.target.querySelector("input.oc-position")) {
                const value = parseInt(input.value, 10);
                if (!Number.isNaN(value) && value > highest) {
                    highest = value;
                }
            }
        });
        const position = event.target.querySelector("input.oc-position");
        if (position) {
            position.value = String(highest + 1);
        }
    });
});
