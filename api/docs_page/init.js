// Starts Swagger UI on the API's own document. A file, not an inline script, so
// that the page's Content-Security-Policy can forbid inline scripts.
"use strict";
(function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: new URL(root.getAttribute("data-url"), window.location.href).href,
    domNode: root,
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Nothing leaves this origin: no validator badge fetched from elsewhere.
    validatorUrl: null,
  });
})();
