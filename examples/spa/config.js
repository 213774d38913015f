// Where the page finds its API and PostHog. A build tool would write this
// file from the environment; here it is edited by hand.
window.SPA_CONFIG = {
  // The API (examples/spa/api.py under uvicorn).
  api: "http://127.0.0.1:8000",
  // "omit": the page is on another site than the API and signs in with a
  // bearer token. "include": the page is on the same site (say
  // app.example.com and api.example.com) and signs in with the API's session
  // cookie; the API must then allow credentials.
  credentials: "omit",
  // Your project API key and host; here the local sink (posthog-identity sink).
  posthogKey: "phc_local",
  posthogHost: "http://127.0.0.1:8010",
  // array.full.js bundles the tracing headers extension; array.js would load
  // it from posthogHost, which the local sink does not serve.
  posthogScript: "https://us-assets.i.posthog.com/static/array.full.js",
  // More posthog.init options, if any.
  posthogOptions: {},
};
