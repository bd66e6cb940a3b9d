/* Tussis web page: record or choose cough recordings, send them to this server's
 * API (/api/v1), follow the job or batch, and show the result.
 * Hand-written, no framework, no build step, nothing loaded from another origin. */
(function () {
  "use strict";

  var API = "/api/v1";
  var MAX_RECORD_S = 60;
  var DEFAULT_POLL_S = 1;
  // Long polls (Prefer: wait, docs/api.md): a job's answer comes when it is finished; a
  // batch's at least this often, so its progress bar moves.
  var LONG_POLL_S = 60;
  var BATCH_POLL_S = 5;
  var MAX_POLL_FAILURES = 8;
  var KEY_STORAGE = "tussis.apiKey";
  var RECORDER_TYPES = [
    ["audio/webm;codecs=opus", "webm"],
    ["audio/webm", "webm"],
    ["audio/ogg;codecs=opus", "ogg"],
    ["audio/ogg", "ogg"],
    ["audio/mp4", "m4a"],
  ];
  var STATUS_TEXT = {
    queued: "Queued — waiting for a worker to pick up the recording…",
    running: "Running — the model is analysing the recording…",
    succeeded: "Succeeded — the analysis is finished.",
    failed: "Failed — the recording could not be analysed.",
  };

  function $(id) {
    return document.getElementById(id);
  }

  var state = {
    apiKey: readStoredKey(),
    pending: null, // what to retry once an API key has been entered
    run: 0, // bumped by every new submission; stale timers and responses check it
    busy: false,
    objectUrls: [],
    models: null,
    recorder: null,
    lastStatus: null,
    batchItemsUrl: null,
    batchSelf: null,
    batchDone: -1,
    evaluationAsked: false, // the finished batch's evaluation is asked for once
  };

  // --- small helpers -------------------------------------------------------------

  function readStoredKey() {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {
      return "";
    }
  }

  function storeKey(key) {
    try {
      window.sessionStorage.setItem(KEY_STORAGE, key);
    } catch (e) {
      /* private mode: keep it in memory only */
    }
  }

  function authHeaders() {
    return state.apiKey ? { Authorization: "Bearer " + state.apiKey } : {};
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  function show(id, visible) {
    $(id).hidden = !visible;
  }

  function pct(x) {
    return (x * 100).toFixed(1) + " %";
  }

  /** A metric such as an AUC or a Brier score, or a dash where there is none. */
  function num(x) {
    return x == null ? "–" : Number(x).toFixed(3);
  }

  function bytes(n) {
    if (n == null) return "";
    if (n < 1024) return n + " B";
    if (n < 1024 * 1024) return (n / 1024).toFixed(0) + " KB";
    return (n / (1024 * 1024)).toFixed(1) + " MB";
  }

  function duration(s) {
    if (s == null) return "";
    s = Math.max(0, Math.round(s));
    if (s < 90) return s + " s";
    var m = Math.floor(s / 60);
    return m + " min " + String(s % 60).padStart(2, "0") + " s";
  }

  function objectUrl(blob) {
    var url = URL.createObjectURL(blob);
    state.objectUrls.push(url);
    return url;
  }

  function retryAfterMs(value) {
    var seconds = parseFloat(value);
    if (!isFinite(seconds) || seconds <= 0) seconds = DEFAULT_POLL_S;
    return Math.min(seconds, 30) * 1000;
  }

  function later(run, ms, fn) {
    window.setTimeout(function () {
      if (run === state.run) fn();
    }, ms);
  }

  /** The API's {"error": {"code", "message"}} or a sentence for anything else. */
  function apiError(response) {
    var body = response.body;
    if (body && body.error && body.error.message) {
      return { code: body.error.code || "error", message: body.error.message };
    }
    if (response.status === 0) {
      return {
        code: "network_error",
        message: "Could not reach the Tussis server. Check the connection and try again.",
      };
    }
    return {
      code: "http_" + response.status,
      message: "The server answered with HTTP status " + response.status + ".",
    };
  }

  function parseJson(text) {
    try {
      return text ? JSON.parse(text) : null;
    } catch (e) {
      return null;
    }
  }

  /** POST multipart form data with XMLHttpRequest, for its upload progress events. */
  function upload(url, form, onProgress) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      var headers = authHeaders();
      Object.keys(headers).forEach(function (name) {
        xhr.setRequestHeader(name, headers[name]);
      });
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (event) {
        if (event.lengthComputable) onProgress(event.loaded / event.total, false);
      });
      xhr.upload.addEventListener("load", function () {
        onProgress(1, true);
      });
      xhr.addEventListener("load", function () {
        resolve({
          status: xhr.status,
          body: parseJson(xhr.responseText),
          retryAfter: xhr.getResponseHeader("Retry-After"),
        });
      });
      xhr.addEventListener("error", function () {
        resolve({ status: 0, body: null, retryAfter: null });
      });
      xhr.addEventListener("abort", function () {
        resolve({ status: 0, body: null, retryAfter: null });
      });
      xhr.send(form);
    });
  }

  /** GET JSON; ``poll`` (optional) makes it a long poll (``wait``: Prefer: wait=N)
   * and a conditional one (``etag``: If-None-Match; a 304 answers no body). */
  function getJson(url, poll) {
    var headers = Object.assign({ Accept: "application/json" }, authHeaders());
    if (poll && poll.wait) headers.Prefer = "wait=" + poll.wait;
    if (poll && poll.etag) headers["If-None-Match"] = poll.etag;
    return fetch(url, {
      headers: headers,
      cache: "no-store",
      credentials: "same-origin",
    }).then(
      function (response) {
        return response.text().then(function (text) {
          return {
            status: response.status,
            body: parseJson(text),
            retryAfter: response.headers.get("Retry-After"),
            etag: response.headers.get("ETag"),
            // The server held the answer as asked: ask again at once. Without it (an
            // older server), wait Retry-After between polls.
            waited: /^\s*wait=/.test(response.headers.get("Preference-Applied") || ""),
          };
        });
      },
      function () {
        return { status: 0, body: null, retryAfter: null, etag: null, waited: false };
      }
    );
  }

  /** The next poll of a long-polled resource: at once when the server waited, else
   * after Retry-After. */
  function nextPoll(run, response, fn) {
    later(run, response.waited ? 0 : retryAfterMs(response.retryAfter), fn);
  }

  // --- API key -------------------------------------------------------------------

  function askForKey(response, retry) {
    state.pending = retry;
    var err = apiError(response);
    setText(
      "key-message",
      (state.apiKey
        ? "The server did not accept this API key. Enter another one."
        : "This server asks for an API key. Enter the key you were given.") +
        " (" + err.code + ")"
    );
    show("key-panel", true);
    show("key-toggle", true);
    setStatus(state.apiKey ? "The API key was refused." : "An API key is needed to continue.");
    $("api-key").focus();
  }

  $("key-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var key = $("api-key").value.trim();
    if (!key) return;
    state.apiKey = key;
    storeKey(key);
    $("api-key").value = "";
    show("key-panel", false);
    show("key-toggle", true);
    var retry = state.pending;
    state.pending = null;
    if (retry) retry();
  });

  $("key-toggle").addEventListener("click", function () {
    setText("key-message", "Enter the API key to use for the next requests.");
    show("key-panel", true);
    $("api-key").focus();
  });

  // --- views ---------------------------------------------------------------------

  function setStatus(text) {
    setText("status", text);
  }

  function setSteps(current, failed) {
    var order = ["uploaded", "queued", "running", "done"];
    var index = order.indexOf(current);
    Array.prototype.forEach.call($("steps").children, function (li) {
      var i = order.indexOf(li.getAttribute("data-step"));
      li.className = "";
      li.removeAttribute("aria-current");
      if (i < index) li.className = "done";
      if (i === index) {
        li.className = failed ? "failed" : current === "done" ? "done" : "current";
        li.setAttribute("aria-current", "step");
      }
    });
  }

  function setBusy(busy) {
    state.busy = busy;
    $("file-input").disabled = busy;
    $("drop-zone").classList.toggle("disabled", busy);
    if (!state.recorder) $("record-button").disabled = busy || !recordingSupported();
    show(
      "again",
      !busy && (!$("result-view").hidden || !$("progress-view").hidden || !$("batch-view").hidden)
    );
  }

  function showError(err) {
    setText("error-message", err.message);
    setText("error-code", err.code);
    show("error-box", true);
  }

  function reset() {
    state.run += 1;
    state.pending = null;
    state.lastStatus = null;
    state.objectUrls.forEach(function (url) {
      URL.revokeObjectURL(url);
    });
    state.objectUrls = [];
    [
      "progress-view", "result-view", "batch-view", "error-box", "spectrogram", "playback",
      "result-model-note", "batch-caveat", "evaluation", "evaluation-problem",
      "evaluation-numbers", "evaluation-group-only", "evaluation-roc", "evaluation-calibration",
      "evaluation-training", "evaluation-baselines", "evaluation-flattering", "comparison",
      "comparison-problem", "comparison-numbers", "comparison-roc",
    ].forEach(function (id) {
      show(id, false);
    });
    state.evaluationAsked = false;
    // The address names a batch only while it is shown (startBatch sets it again).
    if (window.location.hash) {
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    $("evaluation-rows").textContent = "";
    $("evaluation-baselines-rows").textContent = "";
    $("comparison-rows").textContent = "";
    $("comparison-roc-img").removeAttribute("src");
    $("evaluation-roc-img").removeAttribute("src");
    $("evaluation-calibration-img").removeAttribute("src");
    show("again", false);
    show("steps", true);
    setUploadProgress(0);
    setSteps("");
    setStatus("");
    setText("batch-status", "");
    $("batch-rows").textContent = "";
    $("rejection-list").textContent = "";
    $("spectrogram-img").removeAttribute("src");
    $("playback-audio").removeAttribute("src");
    return state.run;
  }

  function setUploadProgress(fraction) {
    var value = Math.round(fraction * 100);
    $("upload-progress").value = value;
    setText("upload-percent", value + " %");
  }

  // --- one recording: POST /api/v1/jobs, then poll ---------------------------------

  function analyseOne(blob, filename) {
    var run = reset();
    setBusy(true);
    show("progress-view", true);
    setText("progress-title", "Analysis");
    setText("subject", filename + " · " + bytes(blob.size));
    setStatus("Uploading the recording…");
    $("playback-audio").src = objectUrl(blob);
    show("playback", true);

    var form = new FormData();
    form.append("audio", blob, filename);
    appendModel(form);
    upload(API + "/jobs", form, function (fraction, done) {
      if (run !== state.run) return;
      setUploadProgress(fraction);
      if (done) setStatus("Uploaded — the server is checking the recording…");
    }).then(function (response) {
      if (run !== state.run) return;
      if (response.status === 202 && response.body && response.body.id) {
        setUploadProgress(1);
        showJob(response.body);
        // A long poll: the answer comes the moment the worker has written the result.
        pollJob(run, response.body.id, 0, null);
        return;
      }
      if (response.status === 401) {
        askForKey(response, function () {
          analyseOne(blob, filename);
        });
        return;
      }
      var err = apiError(response);
      show("steps", false); // no job was created
      show("playback", false);
      setStatus("The recording was not accepted.");
      showError(err);
      setBusy(false);
    });
  }

  function pollJob(run, jobId, failures, etag) {
    var poll = { wait: LONG_POLL_S, etag: etag };
    getJson(API + "/jobs/" + encodeURIComponent(jobId), poll).then(function (response) {
      if (run !== state.run) return;
      if (response.status === 304) {
        nextPoll(run, response, function () {
          pollJob(run, jobId, 0, etag);
        });
        return;
      }
      if (response.status === 200 && response.body) {
        var job = response.body;
        showJob(job);
        linkJob(job.id);
        if (job.status === "succeeded" || job.status === "failed") {
          finishJob(run, job);
        } else {
          nextPoll(run, response, function () {
            pollJob(run, jobId, 0, response.etag);
          });
        }
        return;
      }
      if (response.status === 401) {
        askForKey(response, function () {
          pollJob(run, jobId, 0, null);
        });
        return;
      }
      if (response.status === 404) {
        showError(apiError(response));
        setStatus("The job is gone.");
        setBusy(false);
        return;
      }
      // The server or the network hiccuped: keep trying for a while.
      if (failures + 1 >= MAX_POLL_FAILURES) {
        showError(apiError(response));
        setStatus("Lost contact with the server.");
        setBusy(false);
        return;
      }
      setStatus("Lost contact with the server; trying again…");
      later(run, Math.min(1000 * Math.pow(2, failures), 15000), function () {
        pollJob(run, jobId, failures + 1, etag);
      });
    });
  }

  function showJob(job) {
    if (job.status === state.lastStatus) return;
    state.lastStatus = job.status;
    setSteps(job.status === "succeeded" || job.status === "failed" ? "done" : job.status,
      job.status === "failed");
    setStatus(STATUS_TEXT[job.status] || "Status: " + job.status);
  }

  function finishJob(run, job) {
    var audio = job.audio || {};
    var details = [audio.filename || "recording"];
    if (audio.duration_s != null) details.push(audio.duration_s.toFixed(1) + " s");
    if (audio.size_bytes != null) details.push(bytes(audio.size_bytes));
    setText("result-file", details.join(" · "));

    if (job.status === "succeeded") {
      var result = job.result || {};
      setText("result-diagnosis", result.diagnosis);
      setText("result-score", pct(result.score));
      setText("result-score-text", "probability of “sick” according to the model");
      positiveLabel(result).then(function (label) {
        if (run !== state.run) return;
        var text = "probability of “" + label + "” according to the model";
        if (result.threshold != null) {
          text += " (it answers “" + label + "” at " + pct(result.threshold) + " or more)";
        }
        setText("result-score-text", text);
      });
      setText(
        "result-cough",
        coughText(result.cough_detected, result.cough_score) + segmentsText(result.cough_segments, " at")
      );
      setText("result-model", result.model_id + " · version " + result.model_version);
      showModelNote(result);
      show("result-view", true);
      $("result-title").focus();
    } else {
      var err = job.error || { code: "failed", message: "The analysis failed." };
      var message = err.message;
      if (err.cough_score != null) {
        message +=
          " (Cough detected: " + coughText(err.cough_detected, err.cough_score) +
          segmentsText(err.cough_segments, "; it looked hardest at") + ".)";
      }
      showError({ code: err.code, message: message });
    }
    if (job.links && job.links.spectrogram) {
      if (job.result) captionFor(job.result);
      loadFigure(run, job.links.spectrogram, "spectrogram", 0);
    }
    setBusy(false);
  }

  /** The bundle's own caveat and its headline within-source AUC (from its model card),
   * beside the score: a score means little if the model has not learned the cough. */
  function showModelNote(result) {
    setText("result-caveat", result.caveat ? "Model caveat: " + result.caveat : "");
    setText(
      "result-within-source",
      result.within_source_auc != null
        ? "Within-source AUC of this model: " + num(result.within_source_auc) +
            " (how well it ranks positive above negative recordings from one source; 0.5 is chance)."
        : ""
    );
    show("result-model-note", !!result.caveat || result.within_source_auc != null);
  }

  /** " at 1.4–2.4 s, 5.2–6.2 s": where the cough gate found (or looked for) a cough. */
  function segmentsText(segments, lead) {
    if (!segments || !segments.length) return "";
    var parts = segments.map(function (s) {
      return s[0].toFixed(1) + "–" + s[1].toFixed(1) + " s";
    });
    // ``lead`` brings its own spacing: " at", or "; it looked hardest at" (no space
    // before the semicolon).
    return lead + " " + parts.join(", ");
  }

  function coughText(detected, score) {
    if (detected == null) return "not checked (the cough gate is off)";
    var answer = detected ? "yes" : "no";
    return score != null ? answer + " — cough gate score " + pct(score) : answer;
  }

  /** Says whether the model looked at this picture: an Inception V3 bundle does,
   * a YAMNet bundle listens to the audio itself. */
  function captionFor(result) {
    servedModels().then(function (models) {
      for (var i = 0; i < models.length; i++) {
        var m = models[i];
        if (m.id === result.model_id && m.version === result.model_version) {
          $("spectrogram-seen").textContent =
            m.backbone === "inception_v3"
              ? "This is the picture the model (" + m.id + ") looked at."
              : "Drawn for you to look at: the model (" + m.id + ") listens to the audio itself, not to this picture.";
        }
      }
    });
  }

  /** The model chosen in the selector, as the form field `model` (none: the default). */
  function appendModel(form) {
    var chosen = $("model-select").value;
    if (chosen) form.append("model", chosen);
  }

  /** The selector, from GET /api/v1/models: the active diagnosis models, newest version
   * first, the server's default chosen. Shown only when there is a choice to make. */
  function fillModelSelect() {
    servedModels().then(function (models) {
      var select = $("model-select");
      var active = models.filter(function (m) {
        return m.role === "diagnosis" && m.active;
      });
      select.textContent = "";
      active.forEach(function (m) {
        var option = document.createElement("option");
        option.value = m.id + "@" + m.version;
        option.textContent =
          m.id + " · version " + m.version + (m.backbone ? " (" + m.backbone + ")" : "") +
          (m.default ? " — default" : "");
        option.selected = !!m.default;
        select.appendChild(option);
      });
      show("model-picker", active.length > 1);
    });
  }

  function servedModels() {
    return state.models
      ? Promise.resolve(state.models)
      : getJson(API + "/models").then(function (response) {
          state.models = response.status === 200 && response.body ? response.body.models || [] : [];
          return state.models;
        });
  }

  /** The bundle's positive label, from GET /api/v1/models (needs no key). */
  function positiveLabel(result) {
    return servedModels().then(function (models) {
      for (var i = 0; i < models.length; i++) {
        var m = models[i];
        if (m.id === result.model_id && m.version === result.model_version && m.labels && m.labels.length) {
          return m.labels[m.labels.length - 1];
        }
      }
      return "sick";
    });
  }

  /** An image (the figure ``id``, its <img> ``id-img``) fetched with the API key, if any,
   * and shown through a blob: URL; hidden if absent. A spectrogram's first request asks a
   * worker to draw it (202 + Retry-After): ask again until it is. */
  function loadFigure(run, url, id, attempt) {
    fetch(url, { headers: authHeaders(), cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 202) {
          var wait = parseFloat(response.headers.get("Retry-After") || "1");
          if (attempt < 30) later(run, Math.max(0.2, wait) * 1000, function () {
            loadFigure(run, url, id, attempt + 1);
          });
          return null;
        }
        var type = response.headers.get("Content-Type") || "";
        if (!response.ok || type.indexOf("image/") !== 0) {
          throw new Error(String(response.status));
        }
        return response.blob();
      })
      .then(function (blob) {
        if (!blob || run !== state.run) return;
        var img = $(id + "-img");
        img.onload = function () {
          if (run === state.run) show(id, true);
        };
        img.onerror = function () {
          show(id, false);
        };
        img.src = objectUrl(blob);
      })
      .catch(function () {
        show(id, false);
      });
  }

  // --- several files: POST /api/v1/batches, then follow the batch ----------------------

  function analyseMany(files, labels) {
    var run = reset();
    setBusy(true);
    var total = files.reduce(function (sum, f) {
      return sum + f.size;
    }, 0);
    show("progress-view", true);
    show("steps", false);
    setText("progress-title", "Upload");
    setText(
      "subject",
      files.length + " file" + (files.length === 1 ? "" : "s") + " · " + bytes(total) +
        (labels ? " · labels from " + labels.name : "")
    );
    setStatus("Uploading " + files.length + " file" + (files.length === 1 ? "" : "s") + "…");

    var form = new FormData();
    // The labels CSV (path,label[,group]) names the files by the paths they are sent under.
    if (labels) form.append("labels", labels, labels.name);
    appendModel(form);
    files.forEach(function (file) {
      form.append("files", file, file.webkitRelativePath || file.name);
    });
    upload(API + "/batches", form, function (fraction, done) {
      if (run !== state.run) return;
      setUploadProgress(fraction);
      if (done) setStatus("Uploaded — the server is checking the files…");
    }).then(function (response) {
      if (run !== state.run) return;
      if (response.status === 202 && response.body && response.body.id) {
        setUploadProgress(1);
        startBatch(run, response.body, files.length);
        return;
      }
      if (response.status === 401) {
        askForKey(response, function () {
          analyseMany(files, labels);
        });
        return;
      }
      var err = apiError(response);
      if (response.status === 404 && err.code === "not_found") {
        err = {
          code: "batches_unavailable",
          message: "This server cannot analyse several files at once. Choose one file at a time.",
        };
      }
      setStatus("The files were not accepted.");
      showError(err);
      setBusy(false);
    });
  }

  /** ``sent`` is how many files this page uploaded, or null for a batch opened by its
   * link (``#batch=ID``). */
  function startBatch(run, batch, sent) {
    if (sent != null) {
      var accepted = batch.accepted != null ? batch.accepted : batch.total;
      var parts = [accepted + " of " + sent + " files accepted"];
      if (batch.duplicates) parts.push(batch.duplicates + " duplicate" + (batch.duplicates > 1 ? "s" : ""));
      setStatus(parts.join(", ") + ".");
    }
    // The page's address now opens this batch again (a reload, a bookmark, a colleague).
    if (window.location.hash !== "#batch=" + batch.id) {
      window.history.replaceState(null, "", "#batch=" + encodeURIComponent(batch.id));
    }

    var rejected = batch.rejected || [];
    var list = $("rejection-list");
    rejected.forEach(function (item) {
      var li = document.createElement("li");
      var name = document.createElement("strong");
      name.textContent = item.path || "(unnamed file)";
      li.appendChild(name);
      var error = item.error || {};
      li.appendChild(document.createTextNode(" — " + (error.message || "rejected") + " "));
      var code = document.createElement("code");
      code.textContent = error.code || "";
      li.appendChild(code);
      list.appendChild(li);
    });
    show("rejections", rejected.length > 0);

    setText("batch-title", "Batch of " + batch.total + " file" + (batch.total === 1 ? "" : "s"));
    var csv = $("csv-link");
    csv.href = batch.links.results;
    show("csv-link", true);
    show("batch-view", true);
    state.batchItemsUrl = batch.links.items;
    state.batchSelf = batch.links.self;
    state.batchDone = -1;
    showBatch(run, batch);
    if (batch.status !== "completed") {
      pollBatch(run, batch.links.self, 0, null);
    }
  }

  function pollBatch(run, url, failures, etag) {
    getJson(url, { wait: BATCH_POLL_S, etag: etag }).then(function (response) {
      if (run !== state.run) return;
      if (response.status === 304) {
        nextPoll(run, response, function () {
          pollBatch(run, url, 0, etag);
        });
        return;
      }
      if (response.status === 200 && response.body) {
        showBatch(run, response.body);
        if (response.body.status !== "completed") {
          nextPoll(run, response, function () {
            pollBatch(run, url, 0, response.etag);
          });
        }
        return;
      }
      if (response.status === 401) {
        askForKey(response, function () {
          pollBatch(run, url, 0, null);
        });
        return;
      }
      if (response.status === 404 || failures + 1 >= MAX_POLL_FAILURES) {
        showError(apiError(response));
        setText("batch-status", "Lost track of the batch.");
        setBusy(false);
        return;
      }
      setText("batch-status", "Lost contact with the server; trying again…");
      later(run, Math.min(1000 * Math.pow(2, failures), 15000), function () {
        pollBatch(run, url, failures + 1, etag);
      });
    });
  }

  function showBatch(run, batch) {
    var counts = batch.counts || {};
    var finished = (counts.succeeded || 0) + (counts.failed || 0);
    var progress = batch.total ? batch.progress || 0 : batch.status === "completed" ? 1 : 0;
    var value = Math.round(progress * 100);
    $("batch-progress").value = value;
    setText("batch-percent", value + " %");

    var list = $("batch-counts");
    list.textContent = "";
    [
      ["queued", "queued"],
      ["running", "running"],
      ["succeeded", "succeeded"],
      ["failed", "failed"],
    ].forEach(function (pair) {
      var li = document.createElement("li");
      var n = document.createElement("strong");
      n.textContent = String(counts[pair[0]] || 0);
      li.appendChild(n);
      li.appendChild(document.createTextNode(" " + pair[1]));
      list.appendChild(li);
    });

    var text;
    if (batch.status === "completed") {
      text = batch.total
        ? "Completed — all " + batch.total + " files are analysed."
        : "Completed — no file was accepted.";
    } else {
      text = "Analysing — " + finished + " of " + batch.total + " files finished";
      text += batch.eta_s != null ? ", about " + duration(batch.eta_s) + " left." : ".";
    }
    if ($("batch-status").textContent !== text) setText("batch-status", text);

    // Re-read the items when something finished, and once more at the end.
    if (finished !== state.batchDone || batch.status === "completed") {
      state.batchDone = finished;
      loadItems(run, batch.status === "completed");
    }
    if (batch.status === "completed" && !state.evaluationAsked) {
      state.evaluationAsked = true;
      loadEvaluation(run, state.batchSelf + "/evaluation", 0);
    }
  }

  // --- a finished batch with labels: GET /api/v1/batches/{id}/evaluation ----------------

  function loadEvaluation(run, url, attempt) {
    getJson(url).then(function (response) {
      if (run !== state.run) return;
      if (response.status === 200 && response.body) {
        showEvaluation(run, url, response.body);
        return;
      }
      if (response.status === 202) {
        // A worker computes it once (then it is kept): ask again as Retry-After says.
        if (attempt < 300) {
          later(run, retryAfterMs(response.retryAfter), function () {
            loadEvaluation(run, url, attempt + 1);
          });
        }
        return;
      }
      if (response.status === 401) {
        askForKey(response, function () {
          loadEvaluation(run, url, 0);
        });
        return;
      }
      var err = apiError(response);
      if (err.code === "no_labels") return; // nothing labelled: there is nothing to show
      // Finished a moment before the evaluation can be read, or a server hiccup.
      var transient = err.code === "batch_not_finished" || response.status === 0 || response.status >= 500;
      if (transient && attempt < 5) {
        later(run, 1000 * (attempt + 1), function () {
          loadEvaluation(run, url, attempt + 1);
        });
        return;
      }
      setText("evaluation-summary", "");
      setText("evaluation-problem", "The evaluation could not be made: " + err.message + " (" + err.code + ")");
      show("evaluation-problem", true);
      show("evaluation", true);
    });
  }

  /** A count the API gives as a number, a list, or {"count", "examples"}. */
  function count(value) {
    if (value == null) return 0;
    if (Array.isArray(value)) return value.length;
    if (typeof value === "object") return Number(value.count) || 0;
    return Number(value) || 0;
  }

  function evaluationRow(body, name, m, isGroup) {
    var tr = document.createElement("tr");
    var th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    if (isGroup) th.className = "group";
    tr.appendChild(th);
    cell(tr, m.n, "num");
    cell(tr, m.positives, "num");
    var ci = m.auc_ci || [];
    cell(tr, num(m.auc) + (ci[0] != null ? " (" + num(ci[0]) + "–" + num(ci[1]) + ")" : ""), "num");
    cell(tr, m.sensitivity == null ? "–" : pct(m.sensitivity), "num");
    cell(tr, m.specificity == null ? "–" : pct(m.specificity), "num");
    cell(tr, num(m.brier), "num");
    var c = m.confusion || {};
    cell(tr, [c.tp, c.fn, c.tn, c.fp].map(function (x) {
      return x == null ? "–" : String(x);
    }).join(" · "), "num");
    body.appendChild(tr);
  }

  function showEvaluation(run, url, ev) {
    var model = ev.model || {};
    var overall = ev.overall || {};
    var summary = overall.n + " labelled recording" + (overall.n === 1 ? "" : "s") +
      " scored by " + model.id + " · version " + model.version;
    if (ev.threshold != null) summary += ", which answers positive at " + pct(ev.threshold) + " or more";
    if (ev.groups_omitted) {
      summary += ". The " + ev.groups_omitted + " smaller groups have no row of their own (their " +
        "recordings count in All labelled)";
    }
    setText("evaluation-summary", summary + ".");

    var body = $("evaluation-rows");
    body.textContent = "";
    evaluationRow(body, "All labelled", overall, false);
    var groups = ev.groups || {};
    Object.keys(groups).sort().forEach(function (name) {
      evaluationRow(body, "Group " + name, groups[name] || {}, true);
    });

    show("evaluation-numbers", true);

    // Items the model was trained on are left out of the figures above: said first.
    var seen = ev.training_items || {};
    if (seen.message) {
      setText("evaluation-training", seen.message);
      show("evaluation-training", true);
    }
    showBaselines(ev.baselines);
    if (ev.all_items && ev.all_items.overall) {
      setText(
        "evaluation-flattering",
        "With the " + count(seen.left_out) + " recordings the model saw in training, AUC " +
          num(ev.all_items.overall.auc) + " over " + ev.all_items.overall.n +
          " recordings: a figure that flatters the model, not the one above."
      );
      show("evaluation-flattering", true);
    }

    if (Object.keys(groups).length) {
      setText(
        "evaluation-group-only",
        "Group-only AUC: " + num(ev.group_only_auc) + ". This is how well the group alone " +
          "predicts the label. A high group-only AUC means the group alone predicts the label: " +
          "the overall AUC may then come from telling the groups apart rather than from the " +
          "coughs, so look at the AUC within each group."
      );
      show("evaluation-group-only", true);
    }
    var left = [
      count(ev.rejected_by_gate) + " rejected by the cough gate",
      count(ev.label_errors) + " with a label the model does not have",
      count(ev.failed) + " failed",
    ];
    if (ev.unlabelled != null) left.push(count(ev.unlabelled) + " unlabelled");
    var text = "Not in these figures: " + left.join(", ") + ".";
    var examples = (ev.label_errors && ev.label_errors.examples) || [];
    if (examples.length) {
      text += " Labels the model does not have (it knows " +
        ((model.labels || []).map(function (l) {
          return "“" + l + "”";
        }).join(" and ") || "two labels") + "): " +
        examples.map(function (e) {
          return e.path + " (“" + e.label + "”)";
        }).join(", ") + (count(ev.label_errors) > examples.length ? ", …" : "") + ".";
    }
    setText("evaluation-left-out", text);
    show("evaluation", true);
    var links = ev.links || {};
    loadFigure(run, links.roc || url + "/roc.png", "evaluation-roc", 0);
    loadFigure(run, links.calibration || url + "/calibration.png", "evaluation-calibration", 0);
  }

  var BASELINES = ["duration", "active_share", "loudness"];

  function baselineRow(body, name, b) {
    var tr = document.createElement("tr");
    var th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    tr.appendChild(th);
    cell(tr, num(b.model_auc), "num");
    BASELINES.forEach(function (key) {
      cell(tr, num((b[key] || {}).auc), "num");
    });
    var beaten = b.not_beaten_by || [];
    var verdict = cell(tr, beaten.length ? "No: not better than " + beaten.map(function (k) {
      return k.replace("_", " ");
    }).join(", ") : "Yes");
    if (beaten.length) tr.className = "flagged";
    body.appendChild(tr);
    return verdict;
  }

  function showBaselines(baselines) {
    if (!baselines || !baselines.overall) return;
    var body = $("evaluation-baselines-rows");
    body.textContent = "";
    baselineRow(body, "All labelled", baselines.overall);
    var groups = baselines.groups || {};
    Object.keys(groups).sort().forEach(function (name) {
      baselineRow(body, "Group " + name, groups[name] || {});
    });
    show("evaluation-baselines", true);
  }

  // --- two models on the same recordings: GET .../evaluation?compare=<other batch> ------

  function loadComparison(run, url, attempt) {
    getJson(url).then(function (response) {
      if (run !== state.run) return;
      if (response.status === 200 && response.body) {
        showComparison(run, response.body);
        return;
      }
      if (response.status === 202 && attempt < 300) {
        later(run, retryAfterMs(response.retryAfter), function () {
          loadComparison(run, url, attempt + 1);
        });
        return;
      }
      var err = apiError(response);
      setText("comparison-summary", "");
      setText("comparison-problem", "The comparison could not be made: " + err.message + " (" + err.code + ")");
      show("comparison-problem", true);
      show("comparison", true);
    });
  }

  function interval(pair) {
    return pair && pair[0] != null ? num(pair[0]) + " to " + num(pair[1]) : "–";
  }

  function comparisonRow(body, name, f) {
    var tr = document.createElement("tr");
    var th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    tr.appendChild(th);
    var delong = f.delong || {};
    cell(tr, f.n, "num");
    cell(tr, num(f.auc_first), "num");
    cell(tr, num(f.auc_second), "num");
    cell(tr, num(f.difference) + " (" + interval(delong.ci) + ")", "num");
    cell(tr, num(delong.p_value), "num");
    cell(tr, interval(f.bootstrap_ci), "num");
    body.appendChild(tr);
  }

  function showComparison(run, c) {
    var first = c.first || {};
    var second = c.second || {};
    setText(
      "comparison-summary",
      "First: " + first.id + " · version " + first.version + "; second: " + second.id +
        " · version " + second.version + ". " + ((c.items || {}).message || "")
    );
    show("comparison-problem", false);
    var body = $("comparison-rows");
    body.textContent = "";
    comparisonRow(body, "All compared", c.overall || {});
    var groups = c.groups || {};
    Object.keys(groups).sort().forEach(function (name) {
      comparisonRow(body, "Group " + name, groups[name] || {});
    });
    show("comparison-numbers", true);
    show("comparison", true);
    if (c.links && c.links.roc) loadFigure(run, c.links.roc, "comparison-roc", 0);
  }

  $("compare-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var other = $("compare-batch").value.trim();
    if (!other || !state.batchSelf) return;
    $("comparison-rows").textContent = "";
    show("comparison-roc", false);
    loadComparison(state.run, state.batchSelf + "/evaluation?compare=" + encodeURIComponent(other), 0);
  });

  function loadItems(run, last) {
    var rows = [];
    function page(cursor) {
      var url = state.batchItemsUrl + "?limit=200" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      return getJson(url).then(function (response) {
        if (run !== state.run) return null;
        if (response.status !== 200 || !response.body) return null;
        rows = rows.concat(response.body.items || []);
        return response.body.next_cursor ? page(response.body.next_cursor) : rows;
      });
    }
    page(null).then(function (items) {
      if (run !== state.run || !items) return;
      renderItems(items);
      if (last) {
        setBusy(false);
      }
    });
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    if (text instanceof Node) td.appendChild(text);
    else td.textContent = text == null ? "" : text;
    row.appendChild(td);
    return td;
  }

  function renderItems(items) {
    var body = $("batch-rows");
    var fragment = document.createDocumentFragment();
    items.forEach(function (job) {
      var tr = document.createElement("tr");
      var audio = job.audio || {};
      cell(tr, job.path || audio.filename || job.id, "file");
      var badge = document.createElement("span");
      badge.className = "badge " + job.status;
      badge.textContent = job.status;
      cell(tr, badge);
      var result = job.result || {};
      var error = job.error || {};
      cell(tr, job.status === "succeeded" ? result.diagnosis : "");
      cell(tr, job.status === "succeeded" ? pct(result.score) : "", "num");
      var detected = job.status === "succeeded" ? result.cough_detected : error.cough_detected;
      var score = job.status === "succeeded" ? result.cough_score : error.cough_score;
      cell(tr, job.status === "succeeded" || error.cough_score != null ? coughText(detected, score) : "");
      var message = cell(tr, job.status === "failed" ? error.message : "");
      if (error.code) message.title = error.code;
      fragment.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(fragment);
    showBatchCaveats(items);
  }

  /** Each model's caveat once, above the table (every score in it carries it). */
  function showBatchCaveats(items) {
    var seen = {};
    var notes = [];
    items.forEach(function (job) {
      var r = job.result;
      if (!r || (!r.caveat && r.within_source_auc == null)) return;
      var key = r.model_id + " " + r.model_version;
      if (seen[key]) return;
      seen[key] = true;
      var text = "Model caveat (" + r.model_id + " · version " + r.model_version + "): " +
        (r.caveat || "");
      if (r.within_source_auc != null) text += " Within-source AUC: " + num(r.within_source_auc) + ".";
      notes.push(text);
    });
    setText("batch-caveat", notes.join(" "));
    show("batch-caveat", notes.length > 0);
  }

  // --- a job or a batch opened by its link: /#job=ID, /#batch=ID -----------------------

  function batchFromHash() {
    var match = /^#batch=([A-Za-z0-9-]{1,64})$/.exec(window.location.hash);
    return match ? match[1] : null;
  }

  function jobFromHash() {
    var match = /^#job=([A-Za-z0-9-]{1,64})$/.exec(window.location.hash);
    return match ? match[1] : null;
  }

  /** The page's address now opens this job again (a reload, a bookmark, a colleague). */
  function linkJob(id) {
    if (window.location.hash !== "#job=" + id) {
      window.history.replaceState(null, "", "#job=" + encodeURIComponent(id));
    }
  }

  function openJob(id) {
    var run = reset();
    setBusy(true);
    show("progress-view", true);
    setText("progress-title", "Analysis");
    setText("subject", id);
    setStatus("Looking up the recording's analysis…");
    pollJob(run, id, 0, null);
  }

  function openBatch(id) {
    var run = reset();
    setBusy(true);
    var url = API + "/batches/" + encodeURIComponent(id);
    getJson(url).then(function (response) {
      if (run !== state.run) return;
      if (response.status === 200 && response.body) {
        startBatch(run, response.body, null);
        return;
      }
      if (response.status === 401) {
        askForKey(response, function () {
          openBatch(id);
        });
        return;
      }
      show("progress-view", true);
      show("steps", false);
      setText("progress-title", "Batch");
      setText("subject", id);
      setStatus("This batch cannot be shown.");
      showError(apiError(response));
      setBusy(false);
    });
  }

  // The CSV link is a plain link; with an API key it has to be fetched with the header.
  $("csv-link").addEventListener("click", function (event) {
    if (!state.apiKey) return;
    event.preventDefault();
    var link = event.currentTarget;
    fetch(link.href, { headers: authHeaders(), cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.blob();
      })
      .then(function (blob) {
        var a = document.createElement("a");
        a.href = objectUrl(blob);
        a.download = link.getAttribute("download") || "tussis-results.csv";
        document.body.appendChild(a);
        a.click();
        a.remove();
      })
      .catch(function (e) {
        setText("batch-status", "Could not download the CSV (" + e.message + ").");
      });
  });

  // --- choosing and dropping files -------------------------------------------------

  function isCsv(file) {
    return /\.csv$/i.test(file.name) || file.type === "text/csv";
  }

  /** One recording alone is a job; several, or any with a labels CSV, are a batch. */
  function submitFiles(fileList) {
    var chosen = Array.prototype.slice.call(fileList || []);
    if (!chosen.length || state.busy) return;
    var labels = chosen.filter(isCsv);
    var files = chosen.filter(function (f) {
      return !isCsv(f);
    });
    if (labels.length > 1 || (labels.length && !files.length)) {
      reset();
      show("progress-view", true);
      show("steps", false);
      setText("progress-title", "Labels");
      setText("subject", labels.map(function (f) {
        return f.name;
      }).join(", "));
      setStatus("Nothing was sent.");
      showError({
        code: "labels_without_recordings",
        message: labels.length > 1
          ? "Choose one labels file (CSV) with the recordings it labels, not several."
          : "A labels file (CSV) goes with the recordings it labels: choose them together.",
      });
      setBusy(false);
      return;
    }
    if (files.length === 1 && !labels.length) analyseOne(files[0], files[0].name);
    else analyseMany(files, labels[0] || null);
  }

  $("file-input").addEventListener("change", function (event) {
    var files = event.target.files;
    submitFiles(files);
    event.target.value = ""; // choosing the same file again fires "change" again
  });

  var zone = $("drop-zone");
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      event.dataTransfer.dropEffect = state.busy ? "none" : "copy";
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    zone.addEventListener(type, function () {
      zone.classList.remove("dragging");
    });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    zone.classList.remove("dragging");
    submitFiles(event.dataTransfer.files);
  });
  // A file dropped beside the zone must not make the browser leave the page.
  window.addEventListener("dragover", function (event) {
    event.preventDefault();
  });
  window.addEventListener("drop", function (event) {
    event.preventDefault();
  });

  // --- recording -------------------------------------------------------------------

  function recordingSupported() {
    return !!(window.isSecureContext && navigator.mediaDevices &&
      navigator.mediaDevices.getUserMedia && window.MediaRecorder);
  }

  function recorderType() {
    for (var i = 0; i < RECORDER_TYPES.length; i++) {
      if (MediaRecorder.isTypeSupported(RECORDER_TYPES[i][0])) return RECORDER_TYPES[i];
    }
    return null;
  }

  function extensionFor(mimeType) {
    var type = (mimeType || "").toLowerCase();
    if (type.indexOf("ogg") >= 0) return "ogg";
    if (type.indexOf("mp4") >= 0 || type.indexOf("aac") >= 0) return "m4a";
    if (type.indexOf("wav") >= 0) return "wav";
    return "webm";
  }

  function setRecording(on) {
    var button = $("record-button");
    button.setAttribute("aria-pressed", on ? "true" : "false");
    setText("record-label", on ? "Stop recording" : "Start recording");
  }

  function startRecording() {
    var note = $("record-note");
    note.textContent = "Asking for the microphone…";
    $("record-button").disabled = true;
    navigator.mediaDevices
      .getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      })
      .then(function (stream) {
        var type = recorderType();
        var recorder = type ? new MediaRecorder(stream, { mimeType: type[0] }) : new MediaRecorder(stream);
        var chunks = [];
        var started = performance.now();
        var timer = window.setInterval(function () {
          var seconds = (performance.now() - started) / 1000;
          setText("record-time", seconds.toFixed(1) + " s");
          if (seconds >= MAX_RECORD_S && recorder.state === "recording") recorder.stop();
        }, 100);
        state.recorder = recorder;
        setBusy(true); // no file is taken while recording
        recorder.addEventListener("dataavailable", function (event) {
          if (event.data && event.data.size) chunks.push(event.data);
        });
        recorder.addEventListener("stop", function () {
          window.clearInterval(timer);
          stream.getTracks().forEach(function (track) {
            track.stop();
          });
          state.recorder = null;
          setRecording(false);
          var seconds = (performance.now() - started) / 1000;
          setText("record-time", seconds.toFixed(1) + " s");
          var mimeType = recorder.mimeType || (chunks[0] && chunks[0].type) || "audio/webm";
          var blob = new Blob(chunks, { type: mimeType });
          if (!blob.size) {
            note.textContent = "Nothing was recorded. Check the microphone and try again.";
            setBusy(false);
            return;
          }
          note.textContent = "Recorded " + seconds.toFixed(1) + " s.";
          analyseOne(blob, "recording." + extensionFor(mimeType));
        });
        recorder.start(250);
        setRecording(true);
        $("record-button").disabled = false;
        setText("record-time", "0.0 s");
        note.textContent = "Recording… cough now, then press Stop (at most " + MAX_RECORD_S + " s).";
      })
      .catch(function (error) {
        $("record-button").disabled = false;
        var name = error && error.name;
        note.textContent =
          name === "NotAllowedError" || name === "SecurityError"
            ? "Microphone access was refused. Allow it in the browser, or choose a file instead."
            : name === "NotFoundError"
              ? "No microphone was found. Connect one, or choose a file instead."
              : "The microphone could not be started (" + (error && error.message) + ").";
      });
  }

  $("record-button").addEventListener("click", function () {
    if (state.recorder) {
      if (state.recorder.state === "recording") state.recorder.stop();
      return;
    }
    if (!state.busy) startRecording();
  });

  // A file the browser cannot play (the server may still decode it) needs no dead player.
  $("playback-audio").addEventListener("error", function () {
    if ($("playback-audio").getAttribute("src")) show("playback", false);
  });

  $("again-button").addEventListener("click", function () {
    reset();
    setBusy(false);
    window.scrollTo(0, 0);
    $("record-button").focus();
  });

  // --- start -----------------------------------------------------------------------

  if (!recordingSupported()) {
    $("record-button").disabled = true;
    setText(
      "record-note",
      window.isSecureContext
        ? "This browser cannot record audio. Choose a file instead."
        : "Recording needs a secure connection (HTTPS, or this computer itself). Choose a file instead."
    );
  }
  if (state.apiKey) show("key-toggle", true);
  fillModelSelect();
  window.addEventListener("hashchange", function () {
    if (state.busy) return;
    if (batchFromHash()) openBatch(batchFromHash());
    else if (jobFromHash()) openJob(jobFromHash());
  });
  if (batchFromHash()) openBatch(batchFromHash());
  else if (jobFromHash()) openJob(jobFromHash());
})();
