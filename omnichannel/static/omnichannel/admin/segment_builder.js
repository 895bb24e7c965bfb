/*
 * Rule builder of the segment admin: edits the rules JSON of a segment as a tree of
 * groups ("all of" / "any of", NOT) and conditions picked from the condition catalogue.
 *
 * Progressive enhancement: the page holds a plain <textarea name="rules"> with the JSON. This
 * script hides it, draws the builder from it, and writes the JSON back into it on every change,
 * so what is posted is always the textarea. Without JavaScript the textarea is edited by hand.
 *
 * No framework and no network but the admin's own endpoints (live preview, id lookups).
 */
(function () {
  "use strict";

  var PREVIEW_DELAY = 400; // ms of quiet before the live preview is asked again
  var LOOKUP_DELAY = 250;

  // --- small DOM helpers ----------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (key) {
        var value = attrs[key];
        if (value === null || value === undefined || value === false) return;
        if (key === "text") node.textContent = value;
        else if (key === "className") node.className = value;
        else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), value);
        else node.setAttribute(key, value === true ? "" : value);
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function readJSON(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function format(template, values) {
    return template.replace(/%\((\w+)\)s/g, function (match, name) {
      return values[name] === undefined ? match : String(values[name]);
    });
  }

  function debounce(fn, delay) {
    var timer = null;
    return function () {
      var args = arguments;
      clearTimeout(timer);
      timer = setTimeout(function () {
        fn.apply(null, args);
      }, delay);
    };
  }

  function isGroup(node) {
    return node && typeof node === "object" && Array.isArray(node.children);
  }

  var uid = 0;
  function nextId() {
    uid += 1;
    return "ocrb-" + uid;
  }

  // --- the builder ----------------------------------------------------------------------------

  function RuleBuilder(container) {
    this.container = container;
    this.textarea = container.querySelector("textarea");
    this.catalog = readJSON(container.dataset.catalog) || [];
    this.labels = readJSON(container.dataset.labels) || {};
    this.t = readJSON(container.dataset.strings) || {};
    this.previewUrl = container.dataset.previewUrl;
    this.lookupUrl = container.dataset.lookupUrl;
    this.segmentId = container.dataset.segmentId || null;
    this.types = {};
    var types = this.types;
    this.catalog.forEach(function (type) {
      types[type.key] = type;
    });
    this.previewSeq = 0;
    this.errorsByPath = {};
    this.schedulePreview = debounce(this.preview.bind(this), PREVIEW_DELAY);
  }

  RuleBuilder.prototype.init = function () {
    var parsed = this.parse(this.textarea.value);
    if (parsed === null) {
      // Not JSON we understand (e.g. the form came back with a syntax error): leave the raw
      // text in front of the user instead of replacing it with an empty tree.
      this.root = this.emptyGroup();
      this.rawMode = true;
    } else {
      this.root = parsed;
      this.rawMode = false;
    }
    this.build();
    this.render();
    this.renderSummary();
    if (!this.rawMode) this.preview();
  };

  RuleBuilder.prototype.emptyGroup = function () {
    return { op: "all", negate: false, children: [] };
  };

  RuleBuilder.prototype.newCondition = function () {
    return { type: "", negate: false, params: {} };
  };

  /** The tree from JSON text, or null when the text is not a rules tree. */
  RuleBuilder.prototype.parse = function (text) {
    var data;
    if (!text || !text.trim()) return this.emptyGroup();
    try {
      data = JSON.parse(text);
    } catch (e) {
      return null;
    }
    if (!isGroup(data)) return null;
    // An operator the builder cannot show (typo in raw JSON): keep the text as it is, so the
    // server's error names it and nothing is silently rewritten.
    var understood = true;
    (function check(node) {
      if (!isGroup(node)) return;
      if (node.op !== undefined && node.op !== "all" && node.op !== "any") understood = false;
      node.children.forEach(check);
    })(data);
    if (!understood) return null;
    function walk(node) {
      if (isGroup(node)) {
        return {
          op: node.op === "any" ? "any" : "all",
          negate: !!node.negate,
          children: node.children.map(walk),
        };
      }
      if (node && typeof node === "object" && typeof node.type === "string") {
        return {
          type: node.type,
          negate: !!node.negate,
          params: node.params && typeof node.params === "object" ? node.params : {},
        };
      }
      return null;
    }
    var root = walk(data);
    var complete = true;
    (function check(node) {
      if (node === null) complete = false;
      else if (isGroup(node)) node.children.forEach(check);
    })(root);
    return complete ? root : null;
  };

  // --- serialisation --------------------------------------------------------------------------

  RuleBuilder.prototype.paramValue = function (spec, value) {
    var empty = value === undefined || value === null || value === "";
    if (spec.type === "boolean") return !!value;
    if (spec.type === "multichoice") return Array.isArray(value) ? value : empty ? [] : [value];
    if (empty) return undefined;
    if (spec.type === "integer") {
      // Keep what the user typed when it is not a whole number: the server names the error.
      return /^-?\d+$/.test(String(value).trim()) ? parseInt(value, 10) : String(value);
    }
    if (spec.type === "decimal") return String(value).trim();
    if (spec.type === "product" || spec.type === "category" || spec.type === "segment") {
      if (Array.isArray(value)) return value;
      return /^\d+$/.test(String(value)) ? parseInt(value, 10) : value;
    }
    return value;
  };

  /** The JSON tree; also records each node's server path (conditions without a type skipped). */
  RuleBuilder.prototype.serialize = function () {
    var self = this;
    function walk(node, path) {
      node._path = path;
      if (isGroup(node)) {
        var children = [];
        node.children.forEach(function (child) {
          if (!isGroup(child) && !child.type) {
            child._path = null;
            return;
          }
          var prefix = path ? path + "." : "";
          children.push(walk(child, prefix + "children[" + children.length + "]"));
        });
        return { op: node.op, negate: !!node.negate, children: children };
      }
      var type = self.types[node.type];
      var params = {};
      if (type) {
        type.params.forEach(function (spec) {
          var value = self.paramValue(spec, node.params[spec.name]);
          if (value !== undefined) params[spec.name] = value;
        });
      } else {
        params = node.params || {};
      }
      return { type: node.type, negate: !!node.negate, params: params };
    }
    return walk(this.root, "");
  };

  RuleBuilder.prototype.changed = function (structural) {
    if (structural) this.render();
    this.textarea.value = JSON.stringify(this.serialize(), null, 2);
    this.summary.classList.add("oc-rb-stale"); // until the server's sentence comes back
    this.setStatus(this.t.counting);
    this.schedulePreview();
  };

  // --- skeleton -------------------------------------------------------------------------------

  RuleBuilder.prototype.build = function () {
    var self = this;
    var row = this.container.closest(".form-row");
    if (row) row.classList.add("oc-rules-row", "oc-rules-js");
    this.container.classList.add("oc-rules-enhanced");

    this.tree = el("div", { className: "oc-rb-tree" });
    this.summary = el("p", { className: "oc-rb-summary-text" });
    this.rawToggle = el("button", {
      type: "button",
      className: "oc-rb-link",
      text: this.t.edit_json,
      onclick: function () {
        self.toggleRaw();
      },
    });
    this.rawNote = el("p", { className: "oc-rb-raw-note", text: this.t.raw_note });
    var builder = el("div", { className: "oc-rb-builder" }, [
      this.tree,
      el("div", { className: "oc-rb-summary" }, [
        el("h3", { text: this.t.summary }),
        this.summary,
      ]),
      el("div", { className: "oc-rb-json-tools" }, [this.rawToggle]),
      this.rawNote,
    ]);

    this.countNode = el("div", { className: "oc-rb-count", "aria-live": "polite" });
    this.statusNode = el("div", { className: "oc-rb-status" });
    this.errorsNode = el("ul", { className: "oc-rb-errors", hidden: true });
    this.sampleNode = el("ol", { className: "oc-rb-sample" });
    this.sampleTitle = el("h3", { text: this.t.sample });
    var panel = el("aside", { className: "oc-rb-preview", "aria-label": this.t.preview }, [
      el("h3", { text: this.t.preview }),
      this.countNode,
      this.statusNode,
      this.errorsNode,
      this.sampleTitle,
      this.sampleNode,
    ]);
    this.layout = el("div", { className: "oc-rb" }, [builder, panel]);
    this.container.insertBefore(this.layout, this.container.firstChild);

    // Typing in the raw JSON redraws the builder as soon as the text is a valid tree.
    this.textarea.addEventListener(
      "input",
      debounce(function () {
        var parsed = self.parse(self.textarea.value);
        if (parsed !== null) {
          self.root = parsed;
          self.render();
          self.renderSummary();
          self.preview();
        } else {
          self.showErrors([{ path: "", message: self.t.raw_invalid }]);
        }
      }, PREVIEW_DELAY)
    );
    this.setRaw(this.rawMode);
  };

  RuleBuilder.prototype.setRaw = function (raw) {
    this.rawMode = raw;
    this.container.classList.toggle("oc-rb-raw", raw);
    this.rawToggle.textContent = raw ? this.t.hide_json : this.t.edit_json;
    this.rawNote.hidden = !raw;
  };

  RuleBuilder.prototype.toggleRaw = function () {
    if (this.rawMode) {
      var parsed = this.parse(this.textarea.value);
      if (parsed === null) {
        this.showErrors([{ path: "", message: this.t.raw_invalid }]);
        return;
      }
      this.root = parsed;
      this.render();
      this.renderSummary();
      this.preview();
    }
    this.setRaw(!this.rawMode);
  };

  // --- tree -----------------------------------------------------------------------------------

  RuleBuilder.prototype.render = function () {
    this.serialize(); // refresh the server paths used to place errors
    this.tree.textContent = "";
    this.tree.appendChild(this.renderGroup(this.root, null));
    this.applyErrors();
  };

  RuleBuilder.prototype.renderGroup = function (group, parent) {
    var self = this;
    var isRoot = parent === null;
    var box = el("div", { className: "oc-rb-group" + (isRoot ? " oc-rb-root" : "") });
    box._node = group;
    if (group.negate) box.classList.add("oc-rb-negated");

    var opSelect = el(
      "select",
      {
        className: "oc-rb-op",
        "aria-label": this.t.match,
        onchange: function () {
          group.op = opSelect.value;
          self.changed(true);
        },
      },
      [
        el("option", { value: "all", text: this.t.all }),
        el("option", { value: "any", text: this.t.any }),
      ]
    );
    opSelect.value = group.op;

    var header = el("div", { className: "oc-rb-group-header" }, [
      this.notToggle(group, isRoot ? this.t.not_root_title : this.t.not_group_title),
      el("span", { className: "oc-rb-lead", text: isRoot ? this.t.root_lead : this.t.group_lead }),
      opSelect,
      el("span", { className: "oc-rb-lead", text: this.t.following }),
    ]);
    if (!isRoot) {
      header.appendChild(this.removeButton(parent, group, this.t.remove_group));
    }
    box.appendChild(header);

    var list = el("div", { className: "oc-rb-children" });
    if (!group.children.length) {
      list.appendChild(
        el("p", {
          className: "oc-rb-empty",
          text: isRoot ? this.t.empty_root : this.t.empty_group,
        })
      );
    }
    group.children.forEach(function (child, index) {
      if (index > 0) {
        list.appendChild(
          el("div", {
            className: "oc-rb-joiner",
            text: group.op === "any" ? self.t.or : self.t.and,
          })
        );
      }
      list.appendChild(
        isGroup(child) ? self.renderGroup(child, group) : self.renderCondition(child, group)
      );
    });
    box.appendChild(list);
    box.appendChild(el("div", { className: "oc-rb-errmsg", hidden: true }));

    box.appendChild(
      el("div", { className: "oc-rb-actions" }, [
        el("button", {
          type: "button",
          className: "oc-rb-add oc-rb-add-condition",
          text: "+ " + this.t.add_condition,
          onclick: function () {
            var condition = self.newCondition();
            group.children.push(condition);
            self.render();
            self.focusType(condition);
          },
        }),
        el("button", {
          type: "button",
          className: "oc-rb-add oc-rb-add-group",
          text: "+ " + this.t.add_group,
          onclick: function () {
            var nested = self.emptyGroup();
            nested.op = group.op === "all" ? "any" : "all";
            var condition = self.newCondition();
            nested.children.push(condition);
            group.children.push(nested);
            self.render();
            self.focusType(condition);
          },
        }),
      ])
    );
    return box;
  };

  RuleBuilder.prototype.focusType = function (condition) {
    var rows = this.tree.querySelectorAll(".oc-rb-condition");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i]._node === condition) {
        rows[i].querySelector(".oc-rb-type").focus();
        return;
      }
    }
  };

  RuleBuilder.prototype.notToggle = function (node, title) {
    var self = this;
    var button = el("button", {
      type: "button",
      className: "oc-rb-not",
      "aria-pressed": node.negate ? "true" : "false",
      title: title,
      text: this.t.not,
      onclick: function () {
        node.negate = !node.negate;
        self.changed(true);
      },
    });
    return button;
  };

  RuleBuilder.prototype.removeButton = function (parent, node, label) {
    var self = this;
    return el("button", {
      type: "button",
      className: "oc-rb-remove",
      title: label,
      "aria-label": label,
      text: "\u00d7",
      onclick: function () {
        parent.children.splice(parent.children.indexOf(node), 1);
        self.changed(true);
      },
    });
  };

  RuleBuilder.prototype.typeSelect = function (condition) {
    var self = this;
    var select = el("select", {
      className: "oc-rb-type",
      "aria-label": this.t.condition,
      onchange: function () {
        condition.type = select.value;
        condition.params = self.initialParams(self.types[select.value]);
        self.changed(true);
        var row = self.rowOf(condition);
        var first = row && row.querySelector(".oc-rb-params input, .oc-rb-params select");
        if (first) first.focus();
      },
    });
    select.appendChild(el("option", { value: "", text: this.t.choose }));
    var groups = {};
    var order = [];
    this.catalog.forEach(function (type) {
      var category = type.category || "";
      if (!groups[category]) {
        groups[category] = el("optgroup", { label: category || self.t.other });
        order.push(category);
      }
      groups[category].appendChild(el("option", { value: type.key, text: type.label }));
    });
    order.forEach(function (category) {
      select.appendChild(groups[category]);
    });
    if (condition.type && !this.types[condition.type]) {
      // A type this site does not have (removed plug-in, typo in raw JSON): keep it selectable
      // so saving names it instead of silently dropping the condition.
      select.appendChild(
        el("option", {
          value: condition.type,
          text: format(this.t.unknown_type, { key: condition.type }),
        })
      );
    }
    select.value = condition.type;
    return select;
  };

  RuleBuilder.prototype.initialParams = function (type) {
    var params = {};
    if (!type) return params;
    type.params.forEach(function (spec) {
      if (spec.initial !== null && spec.initial !== undefined) params[spec.name] = spec.initial;
    });
    return params;
  };

  RuleBuilder.prototype.rowOf = function (node) {
    var rows = this.tree.querySelectorAll(".oc-rb-condition, .oc-rb-group");
    for (var i = 0; i < rows.length; i++) if (rows[i]._node === node) return rows[i];
    return null;
  };

  RuleBuilder.prototype.renderCondition = function (condition, parent) {
    var type = this.types[condition.type];
    var row = el("div", { className: "oc-rb-condition" });
    row._node = condition;
    if (condition.negate) row.classList.add("oc-rb-negated");
    var line = el("div", { className: "oc-rb-line" }, [
      this.notToggle(condition, this.t.not_condition_title),
      this.typeSelect(condition),
    ]);
    var params = el("div", { className: "oc-rb-params" });
    var self = this;
    if (type) {
      type.params.forEach(function (spec) {
        params.appendChild(self.paramInput(condition, spec));
      });
    }
    line.appendChild(params);
    line.appendChild(this.removeButton(parent, condition, this.t.remove_condition));
    row.appendChild(line);
    if (type && type.description) {
      row.appendChild(el("div", { className: "oc-rb-help", text: type.description }));
    }
    row.appendChild(el("div", { className: "oc-rb-errmsg", hidden: true }));
    return row;
  };

  // --- parameter inputs -----------------------------------------------------------------------

  RuleBuilder.prototype.paramInput = function (condition, spec) {
    var self = this;
    var id = nextId();
    var value = condition.params[spec.name];
    var input;
    var set = function (newValue) {
      condition.params[spec.name] = newValue;
      self.changed(false);
    };
    var wrap = el("span", { className: "oc-rb-param oc-rb-param-" + spec.type });
    wrap.dataset.param = spec.name;

    if (spec.type === "boolean") {
      input = el("input", {
        type: "checkbox",
        id: id,
        checked: !!value,
        onchange: function () {
          set(input.checked);
        },
      });
      wrap.appendChild(input);
      wrap.appendChild(el("label", { for: id, text: spec.label }));
    } else if (spec.type === "multichoice") {
      var chosen = Array.isArray(value) ? value.map(String) : [];
      var boxes = el("span", { className: "oc-rb-checks", role: "group", "aria-label": spec.label });
      wrap.appendChild(el("span", { className: "oc-rb-plabel", text: spec.label }));
      (spec.choices || []).forEach(function (choice) {
        var boxId = nextId();
        var box = el("input", {
          type: "checkbox",
          id: boxId,
          value: choice[0],
          checked: chosen.indexOf(String(choice[0])) !== -1,
          onchange: function () {
            var values = [];
            boxes.querySelectorAll("input:checked").forEach(function (node) {
              values.push(node.value);
            });
            set(values);
          },
        });
        boxes.appendChild(el("span", { className: "oc-rb-check" }, [
          box,
          el("label", { for: boxId, text: choice[1] }),
        ]));
      });
      wrap.appendChild(boxes);
    } else if (spec.type === "choice") {
      input = el("select", {
        id: id,
        onchange: function () {
          set(input.value);
        },
      });
      if (!spec.required) input.appendChild(el("option", { value: "", text: this.t.any_value }));
      (spec.choices || []).forEach(function (choice) {
        input.appendChild(el("option", { value: choice[0], text: choice[1] }));
      });
      input.value = value === undefined || value === null ? "" : String(value);
      if (spec.required && input.value === "" && spec.choices && spec.choices.length) {
        // A required choice shows its first option: store it too, or the JSON would lack it.
        input.value = String(spec.choices[0][0]);
        condition.params[spec.name] = input.value;
      }
      wrap.appendChild(el("label", { for: id, className: "oc-rb-plabel", text: spec.label }));
      wrap.appendChild(input);
    } else if (spec.type === "product" || spec.type === "category" || spec.type === "segment") {
      wrap.appendChild(el("span", { className: "oc-rb-plabel", text: spec.label }));
      wrap.appendChild(this.lookupInput(condition, spec, set));
    } else {
      var numeric = spec.type === "integer" || spec.type === "decimal";
      input = el("input", {
        type: numeric ? "number" : "text",
        id: id,
        step: spec.type === "integer" ? "1" : spec.type === "decimal" ? "any" : null,
        inputmode: spec.type === "integer" ? "numeric" : spec.type === "decimal" ? "decimal" : null,
        className: numeric ? "oc-rb-number" : "oc-rb-text",
        required: spec.required,
        value: value === undefined || value === null ? "" : String(value),
        oninput: function () {
          set(input.value);
        },
      });
      wrap.appendChild(el("label", { for: id, className: "oc-rb-plabel", text: spec.label }));
      wrap.appendChild(input);
    }
    if (spec.help) wrap.title = spec.help;
    return wrap;
  };

  RuleBuilder.prototype.labelOf = function (kind, id) {
    var names = this.labels[kind] || {};
    var label = names[String(id)];
    return label || "#" + id;
  };

  /** A search box over the admin lookup endpoint; the chosen object shows as a chip. */
  RuleBuilder.prototype.lookupInput = function (condition, spec, set) {
    var self = this;
    var kind = spec.type;
    var box = el("span", { className: "oc-rb-lookup" });
    var value = condition.params[spec.name];
    var many = Array.isArray(value) || spec.many;
    var chips = el("span", { className: "oc-rb-chips" });
    var results = el("ul", { className: "oc-rb-results", role: "listbox", hidden: true });
    var search = el("input", {
      type: "search",
      className: "oc-rb-search",
      placeholder: format(this.t.search, { what: spec.label.toLowerCase() }),
      "aria-label": spec.label,
      autocomplete: "off",
    });

    function current() {
      var v = condition.params[spec.name];
      if (v === undefined || v === null || v === "") return [];
      return Array.isArray(v) ? v : [v];
    }

    function drawChips() {
      chips.textContent = "";
      current().forEach(function (id) {
        chips.appendChild(
          el("span", { className: "oc-rb-chip" }, [
            self.labelOf(kind, id),
            el("button", {
              type: "button",
              "aria-label": self.t.remove,
              text: "\u00d7",
              onclick: function () {
                var rest = current().filter(function (other) {
                  return String(other) !== String(id);
                });
                set(many ? rest : rest.length ? rest[0] : null);
                drawChips();
              },
            }),
          ])
        );
      });
      search.hidden = !many && current().length > 0;
    }

    function choose(item) {
      self.labels[kind] = self.labels[kind] || {};
      self.labels[kind][String(item.id)] = item.text;
      if (many) {
        var values = current().filter(function (other) {
          return String(other) !== String(item.id);
        });
        values.push(item.id);
        set(values);
      } else {
        set(item.id);
      }
      search.value = "";
      results.hidden = true;
      drawChips();
    }

    var lookupSeq = 0;
    var lookup = debounce(function () {
      var seq = ++lookupSeq;
      var url = self.lookupUrl + "?kind=" + encodeURIComponent(kind) + "&q=" +
        encodeURIComponent(search.value.trim());
      if (self.segmentId && kind === "segment") url += "&exclude=" + self.segmentId;
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.json();
        })
        .then(function (data) {
          if (seq !== lookupSeq) return;
          results.textContent = "";
          var items = data.results || [];
          if (!items.length) {
            results.appendChild(el("li", { className: "oc-rb-noresult", text: self.t.no_results }));
          }
          items.forEach(function (item) {
            var option = el("li", {
              role: "option",
              tabindex: "-1",
              text: item.text,
              onmousedown: function (event) {
                event.preventDefault(); // keep focus so blur does not close the list first
                choose(item);
              },
              onkeydown: function (event) {
                if (event.key === "Enter") {
                  event.preventDefault();
                  choose(item);
                }
              },
            });
            results.appendChild(option);
          });
          results.hidden = false;
        })
        .catch(function () {
          results.hidden = true;
        });
    }, LOOKUP_DELAY);

    search.addEventListener("input", lookup);
    search.addEventListener("focus", lookup);
    search.addEventListener("blur", function () {
      setTimeout(function () {
        if (!box.contains(document.activeElement)) results.hidden = true;
      }, 150);
    });
    search.addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        event.preventDefault(); // never submit the admin form from the search box
        var first = results.querySelector("li[role=option]");
        if (first && !results.hidden) first.dispatchEvent(new MouseEvent("mousedown"));
      } else if (event.key === "ArrowDown") {
        var option = results.querySelector("li[role=option]");
        if (option) {
          event.preventDefault();
          option.focus();
        }
      } else if (event.key === "Escape") {
        results.hidden = true;
      }
    });
    results.addEventListener("keydown", function (event) {
      var item = document.activeElement;
      if (event.key === "ArrowDown" && item.nextElementSibling) {
        event.preventDefault();
        item.nextElementSibling.focus();
      } else if (event.key === "ArrowUp") {
        event.preventDefault();
        (item.previousElementSibling || search).focus();
      }
    });

    box.appendChild(chips);
    box.appendChild(search);
    box.appendChild(results);
    drawChips();
    return box;
  };

  // --- summary --------------------------------------------------------------------------------

  RuleBuilder.prototype.describeValue = function (spec, value) {
    var self = this;
    if (spec.type === "boolean") return value ? this.t.yes : this.t.no;
    if (spec.type === "choice" || spec.type === "multichoice") {
      var names = {};
      (spec.choices || []).forEach(function (choice) {
        names[String(choice[0])] = choice[1];
      });
      var values = Array.isArray(value) ? value : [value];
      return values
        .map(function (v) {
          return names[String(v)] || String(v);
        })
        .join(spec.type === "multichoice" ? " " + this.t.or_word + " " : ", ");
    }
    if (spec.type === "product" || spec.type === "category" || spec.type === "segment") {
      var ids = Array.isArray(value) ? value : [value];
      return ids
        .map(function (id) {
          return "\u201c" + self.labelOf(spec.type, id) + "\u201d";
        })
        .join(" " + this.t.or_word + " ");
    }
    return String(value);
  };

  RuleBuilder.prototype.describe = function (node, nested) {
    var self = this;
    var text;
    if (isGroup(node)) {
      var parts = node.children
        .filter(function (child) {
          return isGroup(child) || child.type;
        })
        .map(function (child) {
          return self.describe(child, true);
        });
      if (!parts.length) text = nested ? this.t.everyone_lower : this.t.everyone;
      else {
        text = parts.join(node.op === "any" ? " " + this.t.or + " " : " " + this.t.and + " ");
        if (nested && parts.length > 1) text = "(" + text + ")";
      }
      if (node.negate) text = this.t.not + " " + (nested || parts.length < 2 ? text : "(" + text + ")");
      return text;
    }
    var type = this.types[node.type];
    if (!type) text = format(this.t.unknown_type, { key: node.type });
    else {
      var details = [];
      type.params.forEach(function (spec) {
        var value = node.params[spec.name];
        if (value === undefined || value === null || value === "") return;
        if (Array.isArray(value) && !value.length) return;
        if (spec.type === "boolean" && !value) return;
        details.push(
          spec.type === "boolean" ? spec.label.toLowerCase() : spec.label.toLowerCase() + " " +
            self.describeValue(spec, value)
        );
      });
      text = type.label + (details.length ? " (" + details.join(", ") + ")" : "");
    }
    return node.negate ? this.t.not + " " + text : text;
  };

  /** The rules in words: the builder's own sentence at once, the server's when it answers. */
  RuleBuilder.prototype.renderSummary = function (serverText) {
    this.summary.textContent = serverText || this.describe(this.root, false);
    this.summary.classList.remove("oc-rb-stale");
  };

  // --- live preview ---------------------------------------------------------------------------

  RuleBuilder.prototype.csrfToken = function () {
    var form = this.container.closest("form");
    var input = form && form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  };

  RuleBuilder.prototype.setStatus = function (text) {
    this.statusNode.textContent = text || "";
    this.layout.classList.toggle("oc-rb-busy", !!text && text === this.t.counting);
  };

  RuleBuilder.prototype.preview = function () {
    var self = this;
    var seq = ++this.previewSeq;
    var body = this.rawMode ? this.textarea.value : JSON.stringify(this.serialize());
    this.setStatus(this.t.counting);
    fetch(this.previewUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": this.csrfToken(),
      },
      body: JSON.stringify({ rules: body, segment: this.segmentId }),
    })
      .then(function (response) {
        return response.json().then(function (data) {
          return { ok: response.ok, data: data };
        });
      })
      .then(function (result) {
        if (seq !== self.previewSeq) return; // an older answer arriving late
        self.showPreview(result.data);
      })
      .catch(function () {
        if (seq !== self.previewSeq) return;
        self.renderSummary();
        self.setStatus(self.t.preview_failed);
      });
  };

  RuleBuilder.prototype.showPreview = function (data) {
    var self = this;
    var errors = data.errors || [];
    this.showErrors(errors);
    this.sampleNode.textContent = "";
    if (errors.length || data.count === null || data.count === undefined) {
      if (!this.rawMode) this.renderSummary();
      this.countNode.textContent = "\u2013";
      this.countNode.classList.add("oc-rb-count-unknown");
      this.setStatus(errors.length ? this.t.fix_errors : this.t.preview_failed);
      this.sampleTitle.hidden = true;
      return;
    }
    this.countNode.classList.remove("oc-rb-count-unknown");
    if (data.summary && !this.rawMode) this.renderSummary(data.summary);
    this.countNode.textContent = Number(data.count).toLocaleString();
    this.countNode.dataset.count = String(data.count);
    this.setStatus(data.count === 1 ? this.t.customer : this.t.customers);
    this.sampleTitle.hidden = !data.sample || !data.sample.length;
    (data.sample || []).forEach(function (person) {
      var name = person.url
        ? el("a", { href: person.url, target: "_blank", rel: "noopener", text: person.name })
        : el("span", { text: person.name });
      self.sampleNode.appendChild(
        el("li", null, [
          name,
          person.email ? el("span", { className: "oc-rb-email", text: person.email }) : null,
        ])
      );
    });
    if (data.count > (data.sample || []).length && data.sample && data.sample.length) {
      this.sampleNode.appendChild(
        el("li", {
          className: "oc-rb-more",
          text: format(this.t.and_more, {
            count: (data.count - data.sample.length).toLocaleString(),
          }),
        })
      );
    }
  };

  // --- errors ---------------------------------------------------------------------------------

  /** Place each error on the node its path names (e.g. children[1].params.days). */
  RuleBuilder.prototype.showErrors = function (errors) {
    var list = this.errorsNode;
    list.textContent = "";
    this.errorsByPath = {};
    var self = this;
    errors.forEach(function (error) {
      var path = error.path || "";
      var match = /^(.*?)(?:\.?params\.(\w+)|\.?(type|op|negate|params|children))?$/.exec(path);
      var nodePath = match ? match[1].replace(/\.$/, "") : "";
      var entry = (self.errorsByPath[nodePath] = self.errorsByPath[nodePath] || []);
      entry.push({ param: match ? match[2] : null, message: error.message });
      list.appendChild(el("li", { text: error.text || (path ? path + ": " : "") + error.message }));
    });
    list.hidden = !errors.length;
    this.applyErrors();
  };

  RuleBuilder.prototype.applyErrors = function () {
    var self = this;
    this.tree.querySelectorAll(".oc-rb-has-error").forEach(function (node) {
      node.classList.remove("oc-rb-has-error");
    });
    this.tree.querySelectorAll(".oc-rb-errmsg").forEach(function (node) {
      node.hidden = true;
      node.textContent = "";
    });
    this.tree.querySelectorAll(".oc-rb-condition, .oc-rb-group").forEach(function (row) {
      var node = row._node;
      var errors = node && node._path !== null && node._path !== undefined
        ? self.errorsByPath[node._path]
        : null;
      if (!errors) return;
      row.classList.add("oc-rb-has-error");
      var messages = [];
      errors.forEach(function (error) {
        if (error.param) {
          var param = row.querySelector(':scope > .oc-rb-line [data-param="' + error.param + '"]');
          if (param) param.classList.add("oc-rb-has-error");
          var spec = self.specOf(node, error.param);
          messages.push((spec ? spec.label : error.param) + ": " + error.message);
        } else {
          messages.push(error.message);
        }
      });
      var box = row.querySelector(":scope > .oc-rb-errmsg");
      box.textContent = messages.join(" ");
      box.hidden = false;
    });
  };

  RuleBuilder.prototype.specOf = function (node, name) {
    var type = this.types[node.type];
    if (!type) return null;
    for (var i = 0; i < type.params.length; i++) {
      if (type.params[i].name === name) return type.params[i];
    }
    return null;
  };

  // --- start ----------------------------------------------------------------------------------

  function start() {
    document.querySelectorAll("[data-oc-rule-builder]").forEach(function (container) {
      if (container._ocRuleBuilder) return;
      container._ocRuleBuilder = new RuleBuilder(container);
      container._ocRuleBuilder.init();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
