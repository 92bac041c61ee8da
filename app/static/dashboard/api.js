// Talking to the API: JSON requests and the Server-Sent Events stream of a job, both with the API token if one is set.

const TOKEN_KEY = "openseek-nanochat.token";

export function getToken() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const token = getToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// FastAPI's errors: {"detail": "message"} or {"detail": [{"loc": [...], "msg": "..."}]}.
async function errorOf(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = Array.isArray(body.detail)
      ? body.detail.map((e) => `${e.loc.filter((part) => part !== "body").join(".")}: ${e.msg}`).join("\n")
      : body.detail;
  } catch {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, detail || `HTTP ${response.status}`);
}

export async function request(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Read a text/event-stream with fetch (EventSource cannot send the token) and call onEvent(type, data) for each
// event. Reconnects after a dropped connection with Last-Event-ID, so the server resumes where the stream stopped.
// Returns after an `end` event or when `signal` aborts; throws on answers a retry cannot fix (401, 404).
export async function followEvents(path, onEvent, signal) {
  let lastId = null;
  let retryMs = 2000;
  while (!signal.aborted) {
    try {
      const extra = lastId === null ? {} : { "Last-Event-ID": lastId };
      const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
      if (!response.ok) throw await errorOf(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { type: "message", data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, "");
          buffer = buffer.slice(newline + 1);
          if (line === "") {
            if (event.data.length) {
              onEvent(event.type, event.data.join("\n"));
              if (event.type === "end") return;
            }
            event = { type: "message", data: [] };
            continue;
          }
          if (line.startsWith(":")) continue; // a comment: the server's keep-alive ping
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event.type = text;
          else if (field === "data") event.data.push(text);
          else if (field === "id") lastId = text;
          else if (field === "retry" && /^\d+$/.test(text)) retryMs = Number(text);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) throw error;
    }
    await sleep(retryMs);
  }
}
