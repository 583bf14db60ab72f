/* tunesmith board: the pages' behaviour (vanilla JS, no library; data comes as JSON). */
(function () {
  "use strict";

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  function data(id) { var n = document.getElementById(id); return n ? JSON.parse(n.textContent) : null; }
  function h(tag, attrs, children) {
    var node = document.createElement(tag);
    attrs = attrs || {};
    for (var k in attrs) {
      if (k === "text") { node.textContent = attrs[k]; } else if (k === "cls") { node.className = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    }
    (children || []).forEach(function (c) { if (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); } });
    return node;
  }
  function flash(message, ok) {
    var f = $("#flash");
    if (!f) { return; }
    f.textContent = message || "";
    f.className = "flash" + (ok ? " ok" : "");
    f.hidden = !message;
  }
  function api(url, options) {
    options = options || {};
    if (options.json !== undefined) {
      options.method = options.method || "POST";
      options.headers = {"Content-Type": "application/json"};
      options.body = JSON.stringify(options.json);
    }
    return fetch(url, options).then(function (r) {
      return r.text().then(function (text) {
        var body;
        try { body = text ? JSON.parse(text) : {}; } catch (e) { body = {error: text}; }
        if (!r.ok) {
          var msg = body.error || (body.detail ? JSON.stringify(body.detail) : r.statusText);
          flash(msg);
          throw new Error(msg);
        }
        return body;
      });
    });
  }
  function enc(v) { return encodeURIComponent(v); }
  function fmt(v) { return v === null || v === undefined ? "" : (typeof v === "number" ? String(+v.toPrecision(4)) : String(v)); }

  /* ------------------------------------------------------------ runs */
  function sortable(table) {
    $$("th[data-sort]", table).forEach(function (th) {
      th.addEventListener("click", function () {
        var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
        var asc = !th.classList.contains("sorted-asc");
        $$("th", table).forEach(function (o) { o.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(asc ? "sorted-asc" : "sorted-desc");
        var rows = $$("tbody tr", table);
        rows.sort(function (a, b) {
          var x = a.children[idx], y = b.children[idx];
          var vx = x.dataset.value !== undefined ? x.dataset.value : x.textContent.trim();
          var vy = y.dataset.value !== undefined ? y.dataset.value : y.textContent.trim();
          var nx = parseFloat(vx), ny = parseFloat(vy);
          var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(vx).localeCompare(String(vy));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { r.parentNode.appendChild(r); });
      });
    });
  }
  function compareButton() {
    var btn = $("#compare-btn");
    if (!btn) { return; }
    function update() { btn.disabled = $$(".pick:checked").length < 2; }
    $$(".pick").forEach(function (c) { c.addEventListener("change", update); });
    update();
    btn.addEventListener("click", function () {
      window.location = "/compare?" + $$(".pick:checked").map(function (c) { return "run=" + enc(c.value); }).join("&");
    });
  }
  function runsPage() {
    var table = $("#runs");
    sortable(table);
    compareButton();
    function apply() {
      var q = $("#filter").value.toLowerCase(), st = $("#status-filter").value;
      $$("tbody tr", table).forEach(function (tr) {
        var ok = (!q || tr.textContent.toLowerCase().indexOf(q) >= 0) && (!st || tr.dataset.status === st);
        tr.hidden = !ok;
      });
    }
    $("#filter").addEventListener("input", apply);
    $("#status-filter").addEventListener("change", apply);
    // statuses of running runs refresh without a reload
    setInterval(function () {
      if (!$$("tbody tr[data-status=running]", table).length) { return; }
      api("/api/runs").then(function (d) {
        d.runs.forEach(function (r) {
          var tr = $$("tbody tr", table).filter(function (t) { return t.dataset.path === r.path; })[0];
          if (tr) { tr.dataset.status = r.status; var b = $(".badge", tr); b.textContent = r.status; b.className = "badge " + r.status; }
        });
      }).catch(function () {});
    }, 3000);
  }
  function sweepPage() { compareButton(); }

  /* ------------------------------------------------------------ curves */
  function lossSeries(curves) {
    var keys = Object.keys(curves).filter(function (k) { return /loss$/.test(k); });
    return keys.map(function (k) { return {name: k, points: curves[k]}; });
  }
  function comparePage() {
    var runs = data("compare-data");
    if (!runs) { return; }
    var keys = {};
    runs.forEach(function (r) { Object.keys(r.curves).forEach(function (k) { keys[k] = 1; }); });
    var sel = $("#curve-key");
    var names = Object.keys(keys).sort(function (a, b) { return (/loss$/.test(b) ? 1 : 0) - (/loss$/.test(a) ? 1 : 0) || a.localeCompare(b); });
    names.forEach(function (k) { sel.appendChild(h("option", {text: k})); });
    function draw() {
      var k = sel.value;
      drawChart($("#compare-chart"), runs.map(function (r) { return {name: r.name, points: r.curves[k] || []}; }), {title: k});
    }
    sel.addEventListener("change", draw);
    draw();
  }

  /* ------------------------------------------------------------ one run */
  function runPage() {
    var info = data("run-data");
    function drawCurves(curves) {
      drawChart($("#loss-chart"), lossSeries(curves), {title: "loss (train and validation)"});
      var box = $("#other-charts");
      box.innerHTML = "";
      Object.keys(curves).filter(function (k) { return !/loss$/.test(k) && curves[k].length > 1; }).forEach(function (k) {
        var div = h("div", {cls: "chart"});
        box.appendChild(div);
        drawChart(div, [{name: k, points: curves[k]}], {title: k});
      });
    }
    var live = info.status === "running";
    function refresh() {
      api("/api/run/curves?path=" + enc(info.path)).then(function (d) {
        drawCurves(d.curves);
        var badge = $("#run-status");
        badge.textContent = d.status; badge.className = "badge " + d.status;
        if (live && d.status !== "running") { live = false; window.location.reload(); }
        if (live) { setTimeout(refresh, info.poll * 1000); }
      }).catch(function () { if (live) { setTimeout(refresh, info.poll * 1000); } });
    }
    refresh();
    if ($("#pred-list")) { predictions(info.path); }
  }
  function diffNode(answer, showDiff) {
    var pre = h("pre");
    if (!showDiff) { pre.textContent = answer.text; return pre; }
    answer.diff.forEach(function (seg) { pre.appendChild(h("span", {cls: seg[0] === "added" ? "added" : "", text: seg[1]})); });
    return pre;
  }
  function predictions(path) {
    var page = 1, pages = 1, filled = false;
    function load() {
      var q = "/api/run/predictions?path=" + enc(path) + "&q=" + enc($("#pred-search").value) +
        "&metric=" + enc($("#pred-metric").value) + "&side=" + enc($("#pred-side").value) +
        "&verdict=" + enc($("#pred-verdict").value) + "&page=" + page;
      api(q).then(function (d) {
        if (!filled) {
          d.metrics.forEach(function (m) { $("#pred-metric").appendChild(h("option", {value: m, text: "judged by " + m})); });
          filled = true;
        }
        pages = d.pages;
        $("#pred-count").textContent = d.total + " examples" + (d.pages > 1 ? " · page " + d.page + " of " + d.pages : "");
        var list = $("#pred-list");
        list.innerHTML = "";
        var showDiff = $("#pred-diff").checked;
        d.items.forEach(function (it) {
          var cols = [h("div", {}, [h("div", {cls: "label", text: "reference"}), h("pre", {text: it.reference})])];
          d.sides.forEach(function (s) {
            var a = it.answers[s];
            if (!a) { return; }
            var label = h("div", {cls: "label", text: s});
            Object.keys(a.verdicts).forEach(function (m) {
              label.appendChild(h("span", {cls: "verdict " + (a.verdicts[m] ? "right" : "wrong"), text: m + (a.verdicts[m] ? " ✓" : " ✗")}));
            });
            cols.push(h("div", {cls: "answer-" + s}, [label, diffNode(a, showDiff)]));
          });
          list.appendChild(h("div", {cls: "pred", "data-id": it.id || ""}, [
            h("div", {cls: "label", text: "prompt" + (it.source ? " · " + it.source : "")}), h("pre", {text: it.prompt}),
            h("div", {cls: "cols"}, cols)]));
        });
      }).catch(function () {});
    }
    var timer;
    $("#pred-search").addEventListener("input", function () { clearTimeout(timer); page = 1; timer = setTimeout(load, 250); });
    ["#pred-metric", "#pred-side", "#pred-verdict", "#pred-diff"].forEach(function (s) {
      $(s).addEventListener("change", function () { page = 1; load(); });
    });
    $("#pred-prev").addEventListener("click", function () { if (page > 1) { page--; load(); } });
    $("#pred-next").addEventListener("click", function () { if (page < pages) { page++; load(); } });
    load();
  }

  /* ------------------------------------------------------------ judge */
  function judgePage() {
    var info = data("judge-data"), state = null, index = 0;
    function item() { return state.items[index]; }
    function ratings(box, answer, current) {
      box.innerHTML = "";
      info.criteria.forEach(function (c) {
        var sel = h("select", {"data-criterion": c, "aria-label": answer + " " + c}, [h("option", {value: "", text: "–"})]);
        [1, 2, 3, 4, 5].forEach(function (v) { sel.appendChild(h("option", {value: String(v), text: String(v)})); });
        sel.value = current[c] ? String(current[c]) : "";
        sel.addEventListener("change", function () {
          if (!sel.value) { return; }
          var scores = {}; scores[c] = parseInt(sel.value, 10);
          api("/api/judge/rate", {json: {path: info.path, item: item().item, answer: answer, scores: scores}}).then(function (d) {
            item().ratings[answer][c] = scores[c];
            state.ratings_results = d.ratings;
            $("#j-saved").textContent = "saved";
            results();
          });
        });
        box.appendChild(h("label", {}, [c + " ", sel]));
      });
    }
    function results() {
      var box = $("#j-results");
      box.innerHTML = "";
      var r = state.results;
      if (r && r.scored) {
        var t = h("table", {}, [h("thead", {}, [h("tr", {}, ["side", "win", "tie", "loss"].map(function (x) { return h("th", {text: x}); }))])]);
        var tb = h("tbody");
        Object.keys(r.sides).forEach(function (s) {
          var v = r.sides[s];
          tb.appendChild(h("tr", {}, [h("td", {text: s})].concat(["win_rate", "tie_rate", "loss_rate"].map(function (k) {
            return h("td", {cls: "num", text: Math.round(100 * v[k]) + "%"});
          }))));
        });
        t.appendChild(tb);
        box.appendChild(h("p", {text: r.scored + " of " + r.items + " items scored (saved in human_eval/results.json)"}));
        box.appendChild(t);
      } else { box.appendChild(h("p", {cls: "muted", text: "No preference given yet."})); }
      var rr = state.ratings_results;
      if (rr) {
        var t2 = h("table", {}, [h("thead", {}, [h("tr", {}, [h("th", {text: "side"})].concat(info.criteria.map(function (c) { return h("th", {text: c + " (1-5)"}); })))])]);
        var tb2 = h("tbody");
        Object.keys(rr.sides).forEach(function (s) {
          tb2.appendChild(h("tr", {}, [h("td", {text: s})].concat(info.criteria.map(function (c) {
            var m = rr.sides[s][c] || {};
            return h("td", {cls: "num", text: m.mean === null || m.mean === undefined ? "" : m.mean.toFixed(2) + " (n=" + m.count + ")"});
          }))));
        });
        t2.appendChild(tb2);
        box.appendChild(t2);
      }
    }
    function show() {
      var it = item();
      $("#j-prompt").textContent = it.prompt;
      $("#j-reference").textContent = it.reference;
      $("#j-ref-box").hidden = !it.reference;
      $("#j-A").textContent = it.answer_A;
      $("#j-B").textContent = it.answer_B;
      $("#j-comment").value = it.comment || "";
      $("#j-saved").textContent = it.preferred ? "your choice: " + it.preferred : "";
      $$(".pref").forEach(function (b) { b.classList.toggle("selected", b.dataset.value === it.preferred); });
      ratings($(".ratings[data-answer=A]"), "A", it.ratings.A || {});
      ratings($(".ratings[data-answer=B]"), "B", it.ratings.B || {});
      $("#item-select").value = String(index);
      var done = state.items.filter(function (x) { return x.preferred; }).length;
      $("#judge-progress").textContent = done + " of " + state.items.length + " judged";
    }
    function setup(d) {
      state = d;
      if (!d.started) { $("#judge-start").hidden = false; $("#judge-main").hidden = true; return; }
      $("#judge-start").hidden = true; $("#judge-main").hidden = false;
      var sel = $("#item-select");
      sel.innerHTML = "";
      d.items.forEach(function (it, i) { sel.appendChild(h("option", {value: String(i), text: it.item})); });
      var next = d.items.findIndex(function (it) { return !it.preferred; });
      index = next >= 0 ? next : 0;
      show(); results();
    }
    $("#start-btn").addEventListener("click", function () { api("/api/judge/start", {json: {path: info.path}}).then(setup); });
    $("#item-select").addEventListener("change", function () { index = parseInt(this.value, 10); show(); });
    $("#prev-item").addEventListener("click", function () { if (index > 0) { index--; show(); } });
    $("#next-item").addEventListener("click", function () { if (index < state.items.length - 1) { index++; show(); } });
    $("#next-open").addEventListener("click", function () {
      var n = state.items.findIndex(function (it, i) { return i > index && !it.preferred; });
      if (n < 0) { n = state.items.findIndex(function (it) { return !it.preferred; }); }
      if (n >= 0) { index = n; show(); }
    });
    $$(".pref").forEach(function (b) {
      b.addEventListener("click", function () {
        var it = item();
        api("/api/judge/prefer", {json: {path: info.path, item: it.item, preferred: b.dataset.value, comment: $("#j-comment").value}}).then(function (d) {
          it.preferred = b.dataset.value; it.comment = $("#j-comment").value;
          state.results = d.results;
          results();
          var n = state.items.findIndex(function (x, i) { return i > index && !x.preferred; });
          if (n >= 0) { index = n; }
          show();
          $("#j-saved").textContent = "saved: " + it.item + " → " + b.dataset.value;
        });
      });
    });
    api("/api/judge?path=" + enc(info.path)).then(setup);
  }

  /* ------------------------------------------------------------ chat */
  function chatPage() {
    var info = data("chat-data"), history = [];
    function bubble(side, role, text) {
      var div = h("div", {cls: "msg " + role, text: text});
      $("#log-" + side).appendChild(div);
      return div;
    }
    function ask(side, messages) {
      var box = bubble(side, "assistant", "…");
      return fetch("/api/chat", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({path: info.path, side: side, messages: messages})}).then(function (r) {
        if (!r.ok) { return r.text().then(function (t) { var e; try { e = JSON.parse(t).error; } catch (x) { e = t; } box.textContent = "error: " + e; return ""; }); }
        var reader = r.body.getReader(), decoder = new TextDecoder(), text = "";
        box.textContent = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { return text; }
            text += decoder.decode(chunk.value, {stream: true});
            box.textContent = text;
            return pump();
          });
        }
        return pump();
      });
    }
    $("#chat-form").addEventListener("submit", function (e) {
      e.preventDefault();
      var text = $("#chat-text").value.trim();
      if (!text) { return; }
      $("#chat-text").value = "";
      $("#chat-send").disabled = true;
      history.push({role: "user", content: text});
      bubble("tuned", "user", text); bubble("base", "user", text);
      var msgs = history.slice();
      Promise.all([ask("tuned", msgs), ask("base", msgs)]).then(function (answers) {
        history.push({role: "assistant", content: answers[0]});
      }).finally(function () { $("#chat-send").disabled = false; });
    });
    $("#chat-text").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("#chat-form").requestSubmit(); }
    });
    $("#chat-reset").addEventListener("click", function () { history = []; $("#log-tuned").innerHTML = ""; $("#log-base").innerHTML = ""; });
  }

  /* ------------------------------------------------------------ launch */
  var FIELDS = {"data.path": "data_path", "optim.lr": "lr", "trainer.max_steps": "max_steps",
    "trainer.max_epochs": "max_epochs", "data.batch_size": "batch_size", "run_name": "run_name"};
  function launchPage() {
    var info = data("launch-data"), form = $("#launch-form"), job = null, offset = 0, timer = null;
    if (info.prefill.length) {
      var extra = [];
      info.prefill.forEach(function (line) {
        var i = line.indexOf("="), key = line.slice(0, i), value = line.slice(i + 1);
        if (["data", "model", "method"].indexOf(key) >= 0 && form.elements[key]) { form.elements[key].value = value; }
        else if (FIELDS[key]) { form.elements[FIELDS[key]].value = value; }
        else if (key === "stages") {
          var wanted = value.replace(/[\[\]\s]/g, "").split(",");
          $$("input[name=stages]", form).forEach(function (c) { c.checked = wanted.indexOf(c.value) >= 0; });
        } else { extra.push(line); }
      });
      form.elements.extra.value = extra.join("\n");
    }
    function values() {
      var v = {};
      ["data", "model", "method", "data_path", "lr", "max_steps", "max_epochs", "batch_size", "run_name", "extra"].forEach(function (k) { v[k] = form.elements[k].value; });
      v.stages = $$("input[name=stages]:checked", form).map(function (c) { return c.value; });
      return v;
    }
    function showCommand(d) { var c = $("#command"); c.hidden = false; c.textContent = d.command + "\n# run directory: " + d.run_dir; }
    $("#preview-btn").addEventListener("click", function () { flash(""); api("/api/launch/preview", {json: values()}).then(showCommand); });
    $("#upload").addEventListener("change", function () {
      var file = this.files[0];
      if (!file) { return; }
      if (file.size > info.limit * 1048576) { flash("The file is larger than the upload limit (" + info.limit + " MB)."); return; }
      $("#upload-status").textContent = "uploading…";
      api("/api/upload?name=" + enc(file.name), {method: "PUT", body: file}).then(function (d) {
        form.elements.data_path.value = d.path;
        $("#upload-status").textContent = "uploaded: " + d.path + " (" + d.bytes + " bytes)";
        if (form.elements.data.value === "demo") { form.elements.data.value = "alpaca"; }
      }).catch(function () { $("#upload-status").textContent = "upload failed"; });
    });
    function follow(d) {
      job = d; offset = 0;
      $("#job").hidden = false;
      $("#job-log").textContent = "";
      if (d.run_path) { $("#job-run-link").href = "/run?path=" + enc(d.run_path); }
      poll();
    }
    function poll() {
      clearTimeout(timer);
      if (!job) { return; }
      api("/api/launch/" + job.id + "?offset=" + offset).then(function (d) {
        offset = d.offset;
        var log = $("#job-log");
        if (d.log) { log.textContent += d.log; log.scrollTop = log.scrollHeight; }
        var st = $("#job-status"); st.textContent = d.status; st.className = "badge " + d.status;
        $("#stop-btn").disabled = d.status !== "running";
        $("#resume-btn").disabled = d.status === "running" || d.status === "stopping" || d.status === "finished";
        if (d.status === "running" || d.status === "stopping" || d.log) { timer = setTimeout(poll, 1000); }
        jobs();
      }).catch(function () { timer = setTimeout(poll, 2000); });
    }
    form.addEventListener("submit", function (e) {
      e.preventDefault(); flash("");
      api("/api/launch", {json: values()}).then(function (d) { showCommand({command: d.command, run_dir: d.run_dir}); follow(d); });
    });
    $("#stop-btn").addEventListener("click", function () { if (job) { api("/api/launch/" + job.id + "/stop", {method: "POST"}).then(poll); } });
    $("#resume-btn").addEventListener("click", function () {
      if (job) { api("/api/launch/" + job.id + "/resume", {method: "POST"}).then(function () { poll(); }); }
    });
    function jobs() {
      api("/api/launch/jobs").then(function (d) {
        var ul = $("#jobs"); ul.innerHTML = "";
        d.jobs.forEach(function (j) {
          var a = h("a", {href: "#", text: j.overrides.join(" ") || "(defaults)"});
          a.addEventListener("click", function (e) { e.preventDefault(); follow(j); });
          ul.appendChild(h("li", {}, [h("span", {cls: "badge " + j.status, text: j.status}), " ", a]));
        });
      }).catch(function () {});
    }
    jobs();
  }

  var pages = {runs: runsPage, sweep: sweepPage, compare: comparePage, run: runPage, judge: judgePage, chat: chatPage, launch: launchPage};
  document.addEventListener("DOMContentLoaded", function () {
    var init = pages[document.body.dataset.page];
    if (init) { init(); }
  });
})();
