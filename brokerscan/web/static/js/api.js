// The JSON API, as the dashboard calls it: GET with query parameters, POST with the
// session's CSRF value, errors as ApiError (the API's {"error", "position", "column"}).
// The browser sends the session cookie by itself; the token never passes through here.

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.position = body && Number.isInteger(body.position) ? body.position : null;
    this.column = body && Number.isInteger(body.column) ? body.column : null;
  }
}

/** "/api/v1/<path>?<params>", leaving out empty parameters. */
export function apiUrl(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return `/api/v1/${path}${text ? `?${text}` : ""}`;
}

function csrf() {
  const match = document.cookie.match(/(?:^|;\s*)brokerscan_csrf=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** A 401 anywhere but on the sign-in page sends the browser there, to come back after. */
function signInFirst() {
  if (location.pathname === "/signin") return;
  const back = location.pathname + location.search;
  location.assign(`/signin?next=${encodeURIComponent(back)}`);
}

async function answer(response) {
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json().catch(() => null) : null;
  if (response.ok) return body;
  if (response.status === 401) signInFirst();
  throw new ApiError(response.status, body);
}

/** GET /api/v1/<path> as JSON; *signal* aborts it. */
export async function get(path, params = {}, { signal } = {}) {
  const response = await fetch(apiUrl(path, params), {
    headers: { Accept: "application/json" }, credentials: "same-origin", signal,
  });
  return answer(response);
}

/** POST /api/v1/<path> with a JSON body (or none). */
export async function post(path, body = undefined) {
  const headers = { Accept: "application/json", "X-CSRF-Token": csrf() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(apiUrl(path), {
    method: "POST", headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return answer(response);
}

/** DELETE /api/v1/<path>. */
export async function del(path) {
  const response = await fetch(apiUrl(path), {
    method: "DELETE", headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin",
  });
  if (!response.ok) return answer(response);
  return null;
}

/** Run *tasks* (functions returning promises) at most *width* at a time; the results in
 *  order (a failed task gives its error). The API limits requests per token: a page asks
 *  for what it shows, a few at a time. */
export async function limited(tasks, width = 4) {
  const results = new Array(tasks.length);
  let next = 0;
  async function lane() {
    while (next < tasks.length) {
      const index = next++;
      try {
        results[index] = await tasks[index]();
      } catch (error) {
        results[index] = error;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(width, tasks.length) }, lane));
  return results;
}
