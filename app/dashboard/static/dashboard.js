/* seenn dashboard: live updates over Server-Sent Events, relative times, confirmations.
   Plain script, no build step and no external assets. */
(function () {
  "use strict";

  var TERMINAL = { completed: true, failed: true, cancelled: true };
  var EVENTS = ["job.sync", "job.started", "job.progress", "job.completed", "job.failed",
    "job.cancelled", "parent.updated", "child.progress"];
  var body = document.body;
  var page = body.dataset.page;

  // --- times ------------------------------------------------------------------------------

  function relative(iso) {
    if (!iso) return "—";
    var seconds = (Date.parse(iso) - Date.now()) / 1000;
    var past = seconds < 0, span = Math.abs(seconds);
    if (span < 45) return past ? "just now" : "in " + Math.max(1, Math.round(span)) + " s";
    var units = [[3600, "min", 60], [86400, "h", 3600], [Infinity, "d", 86400]];
    for (var i = 0; i < units.length; i++) {
      if (span < units[i][0]) {
        var n = Math.round(span / units[i][2]);
        return past ? n + " " + units[i][1] + " ago" : "in " + n + " " + units[i][1];
      }
    }
    return "";
  }

  function exact(iso) {
    if (!iso) return "";
    return new Date(iso).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function setTime(el, iso) {
    el.setAttribute("datetime", iso || "");
    el.title = exact(iso);
    el.textContent = relative(iso);
  }

  function refreshTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      if (iso) el.textContent = relative(iso);
    });
  }
  setInterval(refreshTimes, 15000);

  // --- confirmations ------------------------------------------------------------------------

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question)) ev.preventDefault();
  });

  // --- rendering a job into an element with data-f fields -----------------------------------

  function field(root, name) { return root.querySelectorAll('[data-f="' + name + '"]'); }

  function setText(root, name, text) {
    field(root, name).forEach(function (el) { if (el.textContent !== text) el.textContent = text; });
  }

  function stageText(stage) {
    return stage ? stage.name + " (" + stage.current + "/" + stage.total + ")" : "—";
  }

  function queueText(queue) {
    if (!queue) return "—";
    return "#" + queue.position + (queue.total != null ? " of " + queue.total : "");
  }

  function setProgress(root, value) {
    field(root, "bar").forEach(function (el) { el.value = value; el.textContent = value + "%"; });
    setText(root, "pct", value + "%");
  }

  function setStatus(root, status) {
    field(root, "status").forEach(function (el) {
      el.dataset.status = status;
      if (el.textContent !== status) el.textContent = status;
    });
    if (root.tagName === "TR") root.dataset.status = status;
  }

  function fill(root, job) {
    if (job.title != null) {
      setText(root, "title", job.title);
      field(root, "title").forEach(function (a) { a.href = "/dashboard/jobs/" + job.id; });
    }
    if (job.userId != null) setText(root, "userId", job.userId);
    if (job.jobType != null) setText(root, "jobType", job.jobType);
    if (job.children) {
      setText(root, "childrenText", " · " + job.children.completed + "/" + job.children.total + " children");
    }
    if (job.parent) setText(root, "childIndex", String(job.parent.childIndex));
    setStatus(root, job.status);
    setProgress(root, job.progress);
    setText(root, "stage", stageText(job.stage));
    setText(root, "queue", queueText(job.queue));
    var message = job.message || (job.error ? job.error.code + ": " + job.error.message : "");
    field(root, "message").forEach(function (el) {
      el.textContent = message || "—";
      el.title = message;
    });
    var eta = TERMINAL[job.status] ? null : job.estimatedCompletionAt;
    field(root, "eta").forEach(function (el) { setTime(el, eta); });
    field(root, "updatedAt").forEach(function (el) { setTime(el, job.updatedAt); });
  }

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  function rowFor(id) {
    return id ? document.querySelector('tr[data-job-id="' + id + '"]') : null;
  }

  function fromTemplate(id) {
    var tpl = document.getElementById(id);
    return tpl ? tpl.content.firstElementChild.cloneNode(true) : null;
  }

  // --- the jobs list --------------------------------------------------------------------------

  function matchesFilters(job) {
    var d = body.dataset;
    return !job.parentJobId && (!d.filterUser || d.filterUser === job.userId) &&
      (!d.filterType || d.filterType === job.jobType) &&
      (!d.filterStatus || d.filterStatus === job.status);
  }

  function newestShown() {
    var first = document.querySelector("#job-rows tr[data-job-id]");
    return first ? first.dataset.jobId : "";
  }

  function onJobsEvent(name, job) {
    var row = rowFor(job.jobId);
    // A new job: created now, or (job.sync) since the page or the last stream was opened.
    var isNew = name === "job.started" || (name === "job.sync" && job.jobId > newestShown());
    if (!row && isNew && body.dataset.insert === "on" && matchesFilters(job)) {
      row = fromTemplate("job-row");
      row.dataset.jobId = job.jobId;
      document.getElementById("job-rows").prepend(row);
      document.getElementById("no-jobs").hidden = true;
      fill(row, job);
      flash(row);
      return;
    }
    if (row) fill(row, job);
  }

  // --- one job (and a parent's children) ------------------------------------------------------

  function addHistory(name, job) {
    var tbody = document.getElementById("event-rows");
    if (!tbody || name === "job.sync") return;
    var tr = document.createElement("tr");
    var cells = [document.createElement("time"), document.createElement("code"),
      document.createElement("span"), null, null];
    setTime(cells[0], job.updatedAt);
    cells[1].textContent = name;
    cells[2].className = "badge";
    cells[2].dataset.status = job.status;
    cells[2].textContent = job.status;
    cells[3] = document.createTextNode(job.progress + "%");
    var c = job.child;
    cells[4] = document.createTextNode(
      name === "child.progress" && c ? "child #" + c.childIndex + " → " + c.status + " " + c.progress + "%" : (job.message || ""));
    cells.forEach(function (content, i) {
      var td = document.createElement("td");
      if (i === 4) td.className = "ellipsis";
      td.appendChild(content);
      tr.appendChild(td);
    });
    tbody.prepend(tr);
    var none = document.getElementById("no-events");
    if (none) none.hidden = true;
  }

  function setCounts(children) {
    ["pending", "running", "completed", "failed", "cancelled", "total"].forEach(function (s) {
      var el = document.querySelector('[data-count="' + s + '"]');
      if (el && children[s] != null) el.textContent = String(children[s]);
    });
  }

  function insertChild(job) {
    var tbody = document.getElementById("child-rows");
    if (!tbody || !job.parent) return null;
    var row = fromTemplate("child-row");
    row.dataset.jobId = job.jobId;
    row.dataset.index = String(job.parent.childIndex);
    var next = Array.prototype.find.call(tbody.rows, function (r) {
      return Number(r.dataset.index) > job.parent.childIndex;
    });
    tbody.insertBefore(row, next || null);
    document.getElementById("no-children").hidden = true;
    return row;
  }

  // --- the job page's details: fields, result, error, metadata -----------------------------

  // What the stream adds to a job's JSON; the page's field list shows the job itself.
  var NOT_FIELDS = { metadata: true, result: true, error: true, jobId: true, parentJobId: true, child: true };

  function sorted(value) {
    if (Array.isArray(value)) return value.map(sorted);
    if (value === null || typeof value !== "object") return value;
    var out = {};
    Object.keys(value).sort().forEach(function (k) { out[k] = sorted(value[k]); });
    return out;
  }

  function pretty(value) { return JSON.stringify(sorted(value), null, 2); }

  function fieldValue(dd, name, value) {
    dd.textContent = "";
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      var code = document.createElement("code");
      code.textContent = pretty(value);
      dd.appendChild(code);
    } else if (/At$/.test(name)) {
      var time = document.createElement("time");
      setTime(time, value);
      var raw = document.createElement("span");
      raw.className = "muted small";
      raw.textContent = value;
      dd.appendChild(time);
      dd.appendChild(document.createTextNode(" "));
      dd.appendChild(raw);
    } else {
      dd.textContent = String(value);
    }
  }

  function fillFields(job) {
    var list = document.getElementById("fields");
    if (!list) return;
    var seen = {}, previous = null;
    var order = (list.dataset.order || "").split(" ");
    function rank(name) { var i = order.indexOf(name); return i < 0 ? order.length : i; }
    Object.keys(job).sort(function (a, b) { return rank(a) - rank(b); }).forEach(function (name) {
      if (NOT_FIELDS[name]) return;
      seen[name] = true;
      var row = list.querySelector('[data-field="' + name + '"]');
      if (!row) {
        row = document.createElement("div");
        row.dataset.field = name;
        var dt = document.createElement("dt");
        dt.textContent = name;
        row.appendChild(dt);
        row.appendChild(document.createElement("dd"));
      }
      var place = previous ? previous.nextSibling : list.firstChild;
      if (place !== row) list.insertBefore(row, place);  // in the job's own order
      var text = JSON.stringify(job[name]);
      if (row.dataset.value !== text) {
        row.dataset.value = text;
        fieldValue(row.querySelector("dd"), name, job[name]);
      }
      previous = row;
    });
    list.querySelectorAll("[data-field]").forEach(function (row) {
      if (!seen[row.dataset.field]) row.remove();
    });
  }

  // Empty as the server's template sees it (Python's truthiness): nothing to show.
  function empty(value) {
    if (value == null || value === false || value === 0 || value === "") return true;
    if (typeof value === "object") return Object.keys(value).length === 0;
    return false;
  }

  function showJson(el, value) {
    el.hidden = empty(value);
    el.textContent = empty(value) ? "" : pretty(value);
  }

  function fillDetails(job) {
    fillFields(job);
    var result = job.result, error = job.error;
    var resultCard = document.getElementById("result-card");
    if (resultCard) {
      resultCard.hidden = empty(result);
      var link = document.getElementById("result-link");
      var url = result && typeof result.url === "string" && result.url ? result.url : null;
      link.parentNode.hidden = url == null;
      link.href = url || "#";
      link.textContent = url || "";
      showJson(document.getElementById("result"), result);
    }
    var errorCard = document.getElementById("error-card");
    if (errorCard) {
      errorCard.hidden = empty(error);
      document.getElementById("error-code").textContent = error ? error.code : "";
      document.getElementById("error-message").textContent = error ? error.message : "";
      document.getElementById("error-retryable").hidden = !job.retryable;
      showJson(document.getElementById("error-details"), error ? error.details : null);
    }
    var metadata = document.getElementById("metadata");
    if (metadata) {
      showJson(metadata, job.metadata);
      document.getElementById("no-metadata").hidden = !empty(job.metadata);
    }
  }

  function onJobEvent(name, job) {
    var me = body.dataset.job;
    if (job.jobId === me) {
      fill(document.getElementById("summary"), job);
      fillDetails(job);
      if (job.children) setCounts(job.children);
      if (name === "child.progress" && job.child) {
        var childRow = rowFor(job.child.id);
        if (childRow) {
          setStatus(childRow, job.child.status);
          setProgress(childRow, job.child.progress);
        }
      }
      addHistory(name, job);
      if (TERMINAL[job.status]) {
        var cancel = document.getElementById("cancel-form");
        if (cancel) cancel.hidden = true;
      }
    } else if (job.parentJobId === me) {
      var row = rowFor(job.jobId) || (name === "job.started" ? insertChild(job) : null);
      if (row) fill(row, job);
    }
  }

  // --- the stream ---------------------------------------------------------------------------

  var stateEl = document.getElementById("stream-state");

  function showState(state, label) {
    if (!stateEl) return;
    stateEl.dataset.state = state;
    stateEl.querySelector(".label").textContent = label;
  }

  function watchList() {
    var ids = [];
    document.querySelectorAll("[data-job-id]").forEach(function (el) {
      if (el.dataset.jobId && ids.indexOf(el.dataset.jobId) < 0) ids.push(el.dataset.jobId);
    });
    return ids.slice(0, 200);
  }

  var source = null, retry = 1000;

  function connect() {
    var url = "/dashboard/events?watch=" + encodeURIComponent(watchList().join(","));
    if (page === "jobs" && body.dataset.insert === "on") {
      url += "&after=" + encodeURIComponent(newestShown() || "00000000000000000000000000");
    }
    source = new EventSource(url);
    source.addEventListener("connected", function () {
      retry = 1000;
      showState("connected", "Live");
    });
    source.addEventListener("session.ended", function () {
      window.location.assign("/dashboard/login");
    });
    EVENTS.forEach(function (name) {
      source.addEventListener(name, function (ev) {
        var job;
        try { job = JSON.parse(ev.data); } catch (e) { return; }
        if (!job.jobId) job.jobId = job.id;
        if (page === "jobs") onJobsEvent(name, job); else onJobEvent(name, job);
      });
    });
    source.onerror = function () {
      // Reconnect ourselves, so the new stream resends the jobs shown now.
      source.close();
      showState("reconnecting", "Reconnecting…");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }

  if ((page === "jobs" || page === "job") && window.EventSource) connect();
  else if (stateEl) showState("closed", "Not live");
})();
