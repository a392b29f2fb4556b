// The desk's behaviour, kept small and without dependencies: the live list, uploads with
// progress, the timeline synchronised with the player, and the review queue's keys.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fromHtml(html) {
    // Server-rendered and escaped by the templates; parsed, never executed.
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content.firstElementChild;
  }

  // --- the live list ------------------------------------------------------------------------
  var rows = document.getElementById("rows");
  if (rows && rows.dataset.live && window.EventSource) {
    var events = new EventSource(rows.dataset.live);
    events.addEventListener("row", function (e) {
      var msg = JSON.parse(e.data);
      var fresh = fromHtml(msg.html);
      var old = document.getElementById("job-" + msg.id);
      if (old && old.dataset.sig === fresh.dataset.sig) return;
      if (old) old.replaceWith(fresh);
      else rows.prepend(fresh);
      fresh.classList.add("fresh");
      var empty = document.getElementById("empty");
      if (empty) empty.remove();
    });
    events.addEventListener("status", function (e) {
      var strip = document.getElementById("status");
      if (strip) strip.innerHTML = JSON.parse(e.data).html;
    });
  }

  // --- uploads ------------------------------------------------------------------------------
  var drop = document.getElementById("drop");
  if (drop) {
    var input = document.getElementById("files");
    var list = document.getElementById("uploads");
    var waiting = [];
    var active = 0;
    var AT_ONCE = 2; // the API takes two uploads at a time from one key

    var add = function (files) {
      Array.prototype.forEach.call(files, function (file) {
        var item = el("li");
        var bar = el("progress");
        bar.max = file.size || 1;
        bar.value = 0;
        bar.setAttribute("aria-label", "Upload of " + file.name);
        var said = el("span", "said", "waiting");
        item.append(el("span", "name", file.name), bar, said);
        list.append(item);
        waiting.push({ file: file, bar: bar, said: said });
      });
      pump();
    };

    var pump = function () {
      while (active < AT_ONCE && waiting.length) {
        active += 1;
        send(waiting.shift(), function () {
          active -= 1;
          pump();
        });
      }
    };

    var send = function (up, done) {
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/desk/upload");
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      up.said.textContent = "sending";
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) {
          up.bar.max = e.total;
          up.bar.value = e.loaded;
        }
      };
      xhr.onload = function () {
        var body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch (ignored) {
          body = {};
        }
        up.bar.value = up.bar.max;
        up.said.textContent = "";
        if (xhr.status === 201) {
          var link = el("a", "", "queued: open");
          link.href = "/desk/jobs/" + body.id;
          up.said.append(link);
        } else if (xhr.status === 200 && body.cached) {
          up.said.textContent = "already judged: " + body.verdict.label;
        } else if (xhr.status === 503 && body.error && body.error.code === "too_many_uploads") {
          up.said.textContent = "server busy, trying again";
          setTimeout(function () {
            send(up, done);
          }, 2000);
          return;
        } else {
          up.said.className = "said err";
          up.said.textContent = (body.error && body.error.message) || "failed (" + xhr.status + ")";
        }
        done();
      };
      xhr.onerror = function () {
        up.said.className = "said err";
        up.said.textContent = "the connection failed";
        done();
      };
      var form = new FormData();
      form.append("video", up.file, up.file.name);
      xhr.send(form);
    };

    drop.addEventListener("dragover", function (e) {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", function () {
      drop.classList.remove("over");
    });
    drop.addEventListener("drop", function (e) {
      e.preventDefault();
      drop.classList.remove("over");
      add(e.dataTransfer.files);
    });
    input.addEventListener("change", function () {
      add(input.files);
      input.value = "";
    });
  }

  // --- the timeline and the player ----------------------------------------------------------
  var data = document.getElementById("timeline-data");
  if (data) {
    var NS = "http://www.w3.org/2000/svg";
    var W = 1000;
    var H = 100;
    var COLOURS = ["#3b7dd8", "#d8573b", "#2f9e5b", "#9b59b6"];
    var spec = JSON.parse(data.textContent);
    var box = document.getElementById("timeline");
    var player = document.getElementById("player");
    var last = 0;
    spec.series.forEach(function (s) {
      s.points.forEach(function (p) {
        last = Math.max(last, p[0]);
      });
    });
    var end = spec.duration || last || 1;
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    var x = function (t) {
      return (t / end) * W;
    };
    var y = function (p) {
      return H - p * H;
    };
    var shape = function (tag, attrs) {
      var node = document.createElementNS(NS, tag);
      Object.keys(attrs).forEach(function (k) {
        node.setAttribute(k, attrs[k]);
      });
      svg.append(node);
      return node;
    };
    var key = el("div", "tl-key");
    spec.series.forEach(function (s, i) {
      var colour = COLOURS[i % COLOURS.length];
      var pts = s.points;
      // Shade each stretch whose score is at or above the threshold, out to the midpoints
      // between samples.
      pts.forEach(function (p, j) {
        if (p[1] < s.threshold) return;
        var from = j === 0 ? 0 : (pts[j - 1][0] + p[0]) / 2;
        var to = j === pts.length - 1 ? end : (p[0] + pts[j + 1][0]) / 2;
        shape("rect", { class: "tl-over", x: x(from), y: 0, width: Math.max(x(to) - x(from), 1), height: H });
      });
      shape("line", { class: "tl-threshold", x1: 0, x2: W, y1: y(s.threshold), y2: y(s.threshold), stroke: colour });
      shape("polyline", {
        class: "tl-line",
        stroke: colour,
        points: pts.map(function (p) { return x(p[0]) + "," + y(p[1]); }).join(" "),
      });
      var name = el("span", "", "\u25cf " + s.detector);
      name.style.color = colour;
      key.append(name);
    });
    var head = shape("line", { class: "tl-head", x1: 0, x2: 0, y1: 0, y2: H });
    box.append(svg, key);

    var show = function (t) {
      head.setAttribute("x1", x(t));
      head.setAttribute("x2", x(t));
      box.setAttribute("aria-valuenow", t.toFixed(1));
    };
    var seek = function (t) {
      t = Math.min(Math.max(t, 0), end);
      if (player) player.currentTime = t;
      show(t);
    };
    svg.addEventListener("click", function (e) {
      var r = svg.getBoundingClientRect();
      seek(((e.clientX - r.left) / r.width) * end);
    });
    box.addEventListener("keydown", function (e) {
      var step = e.shiftKey ? 5 : 1;
      var now = player ? player.currentTime : Number(box.getAttribute("aria-valuenow"));
      if (e.key === "ArrowRight") seek(now + step);
      else if (e.key === "ArrowLeft") seek(now - step);
      else return;
      e.preventDefault();
    });
    if (player) {
      player.addEventListener("timeupdate", function () {
        show(player.currentTime);
      });
    }
  }

  // --- original or annotated ---------------------------------------------------------------
  var views = document.getElementById("views");
  var clip = document.getElementById("player");
  if (views && clip) {
    var viewSaid = document.getElementById("view-said");
    var showing = clip.getAttribute("src");
    var choose = function (src) {
      views.querySelectorAll("input[name=view]").forEach(function (radio) {
        radio.checked = radio.dataset.src === src;
      });
    };
    views.addEventListener("change", function (e) {
      var src = e.target.dataset.src;
      if (!src || src === showing) return;
      var at = clip.currentTime;
      var playing = !clip.paused;
      viewSaid.textContent = "loading\u2026";
      // One byte first: a first asking renders the version, and a refusal comes back in words,
      // where the player would only say that it failed.
      fetch(src, { headers: { Range: "bytes=0-0" }, credentials: "same-origin" })
        .then(function (r) {
          if (r.ok) return "";
          return r.json().then(
            function (doc) {
              return (doc.error && doc.error.message) || "failed (" + r.status + ")";
            },
            function () {
              return "failed (" + r.status + ")";
            }
          );
        })
        .then(function (problem) {
          if (problem) {
            viewSaid.textContent = problem;
            choose(showing);
            return;
          }
          showing = src;
          // Both versions have the same frames at the same times: carry on where it was.
          clip.addEventListener(
            "loadedmetadata",
            function () {
              clip.currentTime = Math.min(at, clip.duration || at);
              if (playing) clip.play();
              viewSaid.textContent = "";
            },
            { once: true }
          );
          clip.src = src;
        });
    });
  }

  // --- the review queue ---------------------------------------------------------------------
  var queue = document.getElementById("queue");
  if (queue) {
    var items = Array.prototype.slice.call(queue.tBodies[0].rows);
    var said = document.getElementById("queue-said");
    var at = 0;
    var DECISION = { f: "confirmed_fake", r: "confirmed_real", s: "second_look" };
    var select = function (n) {
      if (!items.length) return;
      at = Math.min(Math.max(n, 0), items.length - 1);
      items.forEach(function (row, i) {
        row.classList.toggle("selected", i === at);
        row.setAttribute("aria-selected", i === at ? "true" : "false");
      });
      items[at].scrollIntoView({ block: "nearest" });
    };
    var review = function (row, decision) {
      var body = new URLSearchParams();
      body.set("csrf", csrf);
      body.set("decision", decision);
      fetch("/desk/jobs/" + row.dataset.id + "/review", {
        method: "POST",
        headers: { Accept: "application/json" },
        body: body,
        credentials: "same-origin",
      })
        .then(function (r) {
          return r.json().then(function (doc) {
            return { ok: r.ok, doc: doc };
          });
        })
        .then(function (res) {
          var name = row.querySelector(".name a").textContent;
          if (!res.ok) {
            said.textContent = name + ": " + ((res.doc.error && res.doc.error.message) || "not saved");
            return;
          }
          var cell = row.querySelector(".review");
          cell.textContent = "";
          cell.append(el("span", "rv rv-" + res.doc.decision, res.doc.label));
          said.textContent = name + ": " + res.doc.label;
        });
    };
    items.forEach(function (row, i) {
      row.addEventListener("click", function () {
        select(i);
      });
    });
    select(0);
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, textarea, select")) return;
      var row = items[at];
      if (!row) return;
      if (e.key === "j") select(at + 1);
      else if (e.key === "k") select(at - 1);
      else if (e.key === "Enter") window.location.href = row.dataset.href;
      else if (queue.dataset.review === "yes" && DECISION[e.key]) {
        review(row, DECISION[e.key]);
        select(at + 1);
      } else return;
      e.preventDefault();
    });
  }
})();
