/* Tussis web page, long recordings: a resumable upload (tus 1.0, PATCH by chunks with
 * XMLHttpRequest for its progress), the recording's progress, its timeline, and the
 * list of events, where a click plays that event (GET .../audio?start_s=&end_s=).
 * Hand-written, no framework, nothing loaded from another origin. */
(function () {
  "use strict";

  var API = "/api/v1";
  var CHUNK = 8 * 1024 * 1024;
  var KEY_STORAGE = "tussis.apiKey"; // the key app.js asked for, if the server needs one
  var PAD_S = 0.5; // played around an event
  var PAGE = 200;
  var state = { run: 0, urls: [] };

  function $(id) {
    return document.getElementById(id);
  }
  function headers() {
    var key = "";
    try {
      key = window.sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {
      key = "";
    }
    return key ? { Authorization: "Bearer " + key } : {};
  }
  function setText(id, text) {
    $(id).textContent = text;
  }
  function show(id, visible) {
    $(id).hidden = !visible;
  }
  function clock(seconds) {
    var s = Math.floor(seconds);
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var rest = (seconds - h * 3600 - m * 60).toFixed(2);
    return h + ":" + (m < 10 ? "0" : "") + m + ":" + (rest < 10 ? "0" : "") + rest;
  }
  function b64(text) {
    return window.btoa(unescape(encodeURIComponent(text)));
  }
  function progress(phase, fraction) {
    setText("long-phase", phase);
    setText("long-percent", Math.round(fraction * 100) + " %");
    $("long-bar").value = Math.round(fraction * 100);
  }
  function fail(code, message) {
    setText("long-error-code", code || "error");
    setText("long-error-message", message || "Something went wrong.");
    show("long-error", true);
  }
  function request(method, url, extra, body, onProgress) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      var all = Object.assign({ "Tus-Resumable": "1.0.0" }, headers(), extra || {});
      Object.keys(all).forEach(function (name) {
        xhr.setRequestHeader(name, all[name]);
      });
      if (onProgress) {
        xhr.upload.addEventListener("progress", function (event) {
          onProgress(event.loaded);
        });
      }
      xhr.addEventListener("load", function () {
        resolve(xhr);
      });
      xhr.addEventListener("error", function () {
        resolve(null);
      });
      xhr.send(body || null);
    });
  }
  function errorOf(xhr) {
    try {
      var e = JSON.parse(xhr.responseText).error;
      return [e.code, e.message];
    } catch (err) {
      return ["http_" + (xhr ? xhr.status : 0), "The server answered " + (xhr ? xhr.status : "nothing") + "."];
    }
  }
  function resumeKey(file) {
    return "tussis.upload:" + file.name + ":" + file.size + ":" + file.lastModified;
  }

  /** Create (or resume) the upload, then send the file chunk by chunk. */
  function uploadFile(run, file, startedAt) {
    var meta = ["filename " + b64(file.name)];
    if (file.type) meta.push("filetype " + b64(file.type));
    if (startedAt) meta.push("recorded_at " + b64(startedAt));
    var saved = null;
    try {
      saved = window.localStorage.getItem(resumeKey(file));
    } catch (e) {
      saved = null;
    }
    var located = saved
      ? request("HEAD", saved).then(function (xhr) {
          return xhr && xhr.status === 200 ? [saved, +xhr.getResponseHeader("Upload-Offset")] : null;
        })
      : Promise.resolve(null);
    return located.then(function (found) {
      if (found) return found;
      return request("POST", API + "/uploads", {
        "Upload-Length": String(file.size),
        "Upload-Metadata": meta.join(","),
      }).then(function (xhr) {
        if (!xhr || xhr.status !== 201) throw errorOf(xhr);
        var url = xhr.getResponseHeader("Location");
        try {
          window.localStorage.setItem(resumeKey(file), url);
        } catch (e) {
          /* no resuming across reloads, then */
        }
        return [url, 0];
      });
    }).then(function (where) {
      return sendFrom(run, file, where[0], where[1], 0);
    });
  }

  function sendFrom(run, file, url, offset, failures) {
    if (run !== state.run) return Promise.reject(["cancelled", ""]);
    var end = Math.min(file.size, offset + CHUNK);
    return request(
      "PATCH",
      url,
      { "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" },
      file.slice(offset, end),
      function (loaded) {
        progress("Upload", (offset + loaded) / file.size);
      }
    ).then(function (xhr) {
      if (xhr && xhr.status === 204) {
        var now = +xhr.getResponseHeader("Upload-Offset");
        var recording = xhr.getResponseHeader("Tussis-Recording");
        if (recording) {
          try {
            window.localStorage.removeItem(resumeKey(file));
          } catch (e) {
            /* nothing to forget */
          }
          return recording;
        }
        return sendFrom(run, file, url, now, 0);
      }
      if (xhr && xhr.status >= 400 && xhr.status < 500 && xhr.status !== 409) throw errorOf(xhr);
      if (failures >= 5) throw errorOf(xhr);
      // A dropped connection or a conflict: ask where the server is, and go on from there.
      return new Promise(function (resolve) {
        window.setTimeout(resolve, 1000 * (failures + 1));
      }).then(function () {
        return request("HEAD", url).then(function (head) {
          var at = head && head.status === 200 ? +head.getResponseHeader("Upload-Offset") : offset;
          return sendFrom(run, file, url, at, failures + 1);
        });
      });
    });
  }

  function getJson(url) {
    return fetch(url, { headers: headers() }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw [body.error.code, body.error.message];
        return body;
      });
    });
  }

  function poll(run, url) {
    if (run !== state.run) return;
    getJson(url).then(function (rec) {
      var p = rec.progress;
      if (rec.status === "succeeded") return showResult(run, rec);
      if (rec.status === "failed") return fail(rec.error.code, rec.error.message);
      progress("Counting", p.fraction);
      setText(
        "long-status",
        rec.status === "queued"
          ? "Queued — waiting for a worker to decode the recording…"
          : "Counting — " + p.segments_done + " of " + (p.segments_total || "?") + " segments done…"
      );
      window.setTimeout(function () {
        poll(run, url);
      }, 1000);
    }, function (err) {
      fail(err[0], err[1]);
    });
  }

  function blobUrl(url) {
    return fetch(url, { headers: headers() }).then(function (response) {
      if (!response.ok) throw ["http_" + response.status, "Could not load " + url + "."];
      return response.blob().then(function (blob) {
        var made = URL.createObjectURL(blob);
        state.urls.push(made);
        return made;
      });
    });
  }

  function showResult(run, rec) {
    var r = rec.result;
    progress("Counted", 1);
    setText("long-status", "Counted — " + r.cough_count + " coughs.");
    setText("long-count", String(r.cough_count));
    setText("long-episodes", String(r.episodes));
    setText("long-rate", r.coughs_per_hour === null ? "—" : String(r.coughs_per_hour));
    setText("long-detector", r.detector.name + " " + r.detector.version + " (threshold " + r.detector.threshold + ")");
    show("long-result", true);
    blobUrl(rec.links.timeline).then(function (url) {
      $("long-timeline").src = url;
    });
    blobUrl(rec.links.events_csv).then(function (url) {
      var a = $("long-csv");
      a.href = url;
      a.download = "tussis-" + rec.id + "-events.csv";
      a.hidden = false;
    });
    loadEvents(run, rec, rec.links.events + "?limit=" + PAGE, 0);
  }

  function loadEvents(run, rec, url, shown) {
    if (run !== state.run) return;
    getJson(url).then(function (page) {
      var rows = $("long-rows");
      page.events.forEach(function (event, i) {
        var tr = document.createElement("tr");
        tr.className = "event-row";
        tr.tabIndex = 0;
        tr.dataset.start = event.start_s;
        tr.dataset.end = event.end_s;
        [String(shown + i + 1), clock(event.start_s), (event.end_s - event.start_s).toFixed(2) + " s",
         event.score.toFixed(2)].forEach(function (text) {
          var td = document.createElement("td");
          td.textContent = text;
          tr.appendChild(td);
        });
        tr.addEventListener("click", function () {
          play(rec, event);
        });
        tr.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") play(rec, event);
        });
        rows.appendChild(tr);
      });
      if (page.next_cursor) {
        loadEvents(run, rec, rec.links.events + "?limit=" + PAGE + "&cursor=" + page.next_cursor, shown + page.events.length);
      }
    });
  }

  function play(rec, event) {
    var start = Math.max(0, event.start_s - PAD_S);
    var end = Math.min(start + 60, event.end_s + PAD_S);
    var url = rec.links.audio + "?start_s=" + start.toFixed(3) + "&end_s=" + end.toFixed(3);
    blobUrl(url).then(function (made) {
      var audio = $("long-audio");
      audio.src = made;
      audio.dataset.event = event.start_s;
      var played = audio.play();
      if (played && played.catch) played.catch(function () {});
    }, function (err) {
      fail(err[0], err[1]);
    });
  }

  function start(file) {
    state.run += 1;
    var run = state.run;
    state.urls.forEach(function (url) {
      URL.revokeObjectURL(url);
    });
    state.urls = [];
    $("long-rows").textContent = "";
    show("long-result", false);
    show("long-error", false);
    show("long-progress", true);
    setText("long-status", "Uploading " + file.name + "…");
    var local = $("long-start").value;
    var startedAt = local ? new Date(local).toISOString() : "";
    uploadFile(run, file, startedAt).then(function (recordingUrl) {
      setText("long-status", "Uploaded; waiting for the count…");
      poll(run, recordingUrl);
    }, function (err) {
      if (err[0] !== "cancelled") fail(err[0], err[1]);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("long-file").addEventListener("change", function () {
      if (this.files && this.files[0]) start(this.files[0]);
    });
  });
})();
