// Preview and test send: offer the template keys of the channel picked.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
    const channel = document.getElementById("id_channel");
    const template = document.getElementById("id_template");
    if (!channel || !template) {
        return;
    }
    const update = function () {
        const list = document.querySelector(
            'datalist[data-channel="' + CSS.escape(channel.value) + '"]'
        );
        if (list) {
            template.setAttribute("list", list.id);
        } else {
            template.removeAttribute("list");
        }
    };
    channel.addEventListener("change", update);
    update();
});
