// Thin wrappers over the REST half of the protocol (see PROTOCOL.md).
//
// The page authenticates with the HttpOnly `session` cookie that POST /api/token sets, so
// nothing here ever sees, stores or forwards the bearer token: a script injected into the page
// could not steal it either.

export class ApiError extends Error {
  /**
   * @param {number} status HTTP status, or 0 when the server could not be reached at all.
   * @param {string} message Human-readable, already extracted from FastAPI's `detail`.
   * @param {unknown} [detail] The raw `detail`, for callers that want to look closer.
   */
  constructor(status, message, detail) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.detail = detail;
  }
}

let unauthorizedHandler = () => {};

/**
 * Called whenever an authenticated call answers 401, i.e. the session cookie expired or was
 * revoked while the page was open. The app swaps to the login screen from there.
 */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

/**
 * FastAPI errors carry `{"detail": ...}`: a string for HTTPException, a list of pydantic
 * errors (`{loc, msg, type}`) for validation failures. Reduce either to one readable line.
 */
export function describeDetail(detail) {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => (typeof item === 'string' ? item : item?.msg ?? ''))
      // Pydantic prefixes custom validator messages; users don't need to see that.
      .map((msg) => String(msg).replace(/^Value error,\s*/i, ''))
      .filter(Boolean)
      .join('; ');
  }
  if (detail && typeof detail === 'object' && typeof detail.message === 'string') {
    return detail.message;
  }
  return '';
}

async function request(method, path, { json, form, auth = true } = {}) {
  const headers = { Accept: 'application/json' };
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    // URLSearchParams makes fetch send application/x-www-form-urlencoded, which is what the
    // OAuth2 password flow behind /api/token expects.
    body = new URLSearchParams(form);
  }

  let res;
  let text;
  try {
    res = await fetch(path, { method, headers, body, credentials: 'same-origin', cache: 'no-store' });
    text = await res.text();
  } catch {
    throw new ApiError(0, "Can't reach the server. Check your connection and try again.");
  }

  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null; // e.g. a proxy's HTML error page: fall back to the status line below
    }
  }

  if (!res.ok) {
    if (res.status === 401 && auth) unauthorizedHandler();
    const message = describeDetail(data?.detail) || `${res.status} ${res.statusText}`.trim();
    throw new ApiError(res.status, message, data?.detail);
  }
  return data;
}

const roomPath = (room) => `/api/rooms/${encodeURIComponent(room)}`;

/** 201 {username}; 409 taken; 422 invalid. */
export const register = (username, password) =>
  request('POST', '/api/users', { json: { username, password }, auth: false });

/** 200 and the `session` cookie; 401 on wrong credentials. */
export const login = (username, password) =>
  request('POST', '/api/token', { form: { username, password }, auth: false });

export const logout = () => request('POST', '/api/logout', { auth: false });

/** {protocol, max_message_chars, room_pattern, username_pattern, ...}; needs no session. */
export const config = () => request('GET', '/api/config', { auth: false });

/** {username, admin} of the session's user. Not in PROTOCOL.md v1: callers must tolerate a 404. */
export const me = () => request('GET', '/api/me');

/** The user's rooms, most recently active first: [{name, kind, role, last_seq,
 * last_message_seq, created_at, last_message_at, last_read_seq, unread, mentions, peer}]
 * (the first page of v2's {rooms, next_cursor}; a page holds up to 200). */
export const listRooms = async () => (await request('GET', '/api/rooms')).rooms;

/** Bound on the pages listAllRooms follows: 25 pages of 200 rooms. */
const ROOM_PAGES_MAX = 25;

/** Every room of the user, following next_cursor (bounded: see ROOM_PAGES_MAX). */
export async function listAllRooms() {
  const rooms = [];
  let cursor = null;
  for (let page = 0; page < ROOM_PAGES_MAX; page += 1) {
    const query = new URLSearchParams({ limit: '200' });
    if (cursor) query.set('cursor', cursor);
    const answer = await request('GET', `/api/rooms?${query}`);
    rooms.push(...(answer?.rooms ?? []));
    cursor = answer?.next_cursor;
    if (!cursor) break;
  }
  return rooms;
}

/** One room as the caller sees it ({name, kind, role, ..., peer}); 403/404 when it is not
 * theirs to see. */
export const roomInfo = (room) => request('GET', roomPath(room));

/** 201 with the room; 409 the name exists; 403 a reserved dm- name. */
export const createRoom = (name, kind) => request('POST', '/api/rooms', { json: { name, kind } });

/** The dm with `username` (201 new, 200 existing); 404 unknown user; 403 banned; 422 yourself. */
export const openDm = (username) => request('POST', '/api/dms', { json: { username } });

/** Usernames starting with `q`: {users}. */
export const findUsers = (q, limit = 8) =>
  request('GET', `/api/users?${new URLSearchParams({ q, limit: String(limit) })}`);

/** Public rooms by name, starting with `q`: {rooms: [{name, created_at, last_message_at,
 * members}], next_cursor}. */
export function publicRooms(q, cursor = null, limit = 50) {
  const query = new URLSearchParams({ q, limit: String(limit) });
  if (cursor) query.set('cursor', cursor);
  return request('GET', `/api/rooms/public?${query}`);
}

/** Messages matching `q` in the caller's rooms, newest first (v2): {results: [messages, each
 * with "room"], next_cursor}; 422 for a query with no word to search for. */
export function search(q, cursor = null, limit = 20) {
  const query = new URLSearchParams({ q, limit: String(limit) });
  if (cursor) query.set('cursor', cursor);
  return request('GET', `/api/search?${query}`);
}

/** {room, members: [{username, role}], next_cursor}, by name. */
export function members(room, cursor = null, limit = 200) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (cursor) query.set('cursor', cursor);
  return request('GET', `${roomPath(room)}/members?${query}`);
}

const memberPath = (room, username) => `${roomPath(room)}/members/${encodeURIComponent(username)}`;

/** Add a member, or set their role: {username, role}. */
export const putMember = (room, username, role = null) =>
  request('PUT', memberPath(room, username), { json: role ? { role } : {} });

/** Remove a member of a private room; `me` leaves. 204. */
export const deleteMember = (room, username) => request('DELETE', memberPath(room, username));

/** The caller's live sessions: [{id, created_at, last_seen_at, user_agent, current}]. */
export const sessions = () => request('GET', '/api/sessions');

/** End one session of the caller's (their current one too). */
export const endSession = (id) => request('DELETE', `/api/sessions/${encodeURIComponent(id)}`);

/** End every session of the caller's user, this one included. */
export const logoutEverywhere = () => request('POST', '/api/logout?everywhere=true');

/** {room, messages: [ascending seq], has_more}; with `around` (v2): {room, messages,
 * has_more_before, has_more_after}. At most one of before, after, around. */
export function fetchHistory(room, { before, after, around, limit = 50 } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (before != null) query.set('before', String(before));
  if (after != null) query.set('after', String(after));
  if (around != null) query.set('around', String(around));
  return request('GET', `${roomPath(room)}/messages?${query}`);
}

/** The room's log (v2), every kind of event: {room, events: [frames, ascending seq], has_more}. */
export function fetchEvents(room, { after = 0, limit = 100 } = {}) {
  const query = new URLSearchParams({ after: String(after), limit: String(limit) });
  return request('GET', `${roomPath(room)}/events?${query}`);
}

/** {room, users}. */
export const fetchOnline = (room) => request('GET', `${roomPath(room)}/online`);
