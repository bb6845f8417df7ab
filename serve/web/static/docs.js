// Starts the locally served Swagger UI on /docs (a file, not an inline script, so the CSP needs no
// 'unsafe-inline' for scripts).
"use strict";
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
