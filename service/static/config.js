// The server's limits and name rules (GET /api/config), so the page checks input with the
// numbers and patterns the server enforces instead of copies that drift from them.
//
// When the config cannot be fetched the page starts anyway and lets the server be the judge:
// every check below passes while the rules are unknown, so a message that is too long or a
// bad name goes to the server, which refuses it with its own error (a failed row, a toast,
// the login form's error). Blocking the page instead would lock people out over checks that
// only save a round trip. Meanwhile the fetch is retried with backoff, and the checks apply
// from the moment it answers.

import * as api from './api.js';

const RETRY_BASE_MS = 1_000;
const RETRY_MAX_MS = 30_000;

/** @type {{maxMessageChars: number, maxEmoji: number|null, maxSearchChars: number|null,
 *   password: Range|null, maxEmojiChars: number|null, roomPattern: string, roomRe: RegExp,
 *   room: Range|null, usernamePattern: string, usernameRe: RegExp, username: Range|null}|null}
 * @typedef {{min: number, max: number}} Range */
let current = null;
let attempt = null; // the fetch under way, if any
let failures = 0;
let retryTimer = 0;
let announce;

/** Resolves once, with the config, the first time it has been fetched. */
export const loaded = new Promise((resolve) => { announce = resolve; });

/**
 * Fetch the config unless it is known; resolves with it, or with null when this attempt
 * failed (another is then scheduled). Never rejects. Calling it again while the page waits
 * for a retry tries at once.
 */
export function load() {
  if (current) return Promise.resolve(current);
  if (attempt) return attempt;
  clearTimeout(retryTimer);
  attempt = api.config().then(parse).catch(() => null).then((config) => {
    attempt = null;
    if (config) {
      current = config;
      announce(config);
    } else {
      const wait = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** failures);
      failures = Math.min(failures + 1, 16);
      retryTimer = setTimeout(load, wait);
    }
    return config;
  });
  return attempt;
}

/** A malformed answer (an old server, a proxy's page) counts as no answer. */
function parse(raw) {
  const limit = raw?.max_message_chars;
  const room = raw?.room_pattern;
  const username = raw?.username_pattern;
  // RegExp would turn a missing pattern into one that matches everything.
  if (!Number.isInteger(limit) || limit < 1 || typeof room !== 'string'
      || typeof username !== 'string') return null;
  try {
    return {
      maxMessageChars: limit,
      // v2; an older server's config has none (the server judges alone then).
      maxEmoji: Number.isInteger(raw.max_emoji_per_message) ? raw.max_emoji_per_message : null,
      // Additions of this server (README, API); others have none (the server judges alone).
      maxSearchChars: Number.isInteger(raw.max_search_chars) ? raw.max_search_chars : null,
      password: Number.isInteger(raw.min_password_chars) && Number.isInteger(raw.max_password_chars)
        ? { min: raw.min_password_chars, max: raw.max_password_chars } : null,
      maxEmojiChars: Number.isInteger(raw.max_emoji_chars) ? raw.max_emoji_chars : null,
      roomPattern: room,
      roomRe: new RegExp(room),
      room: lengths(room),
      usernamePattern: username,
      usernameRe: new RegExp(username),
      username: lengths(username),
    };
  } catch {
    return null; // a pattern this browser cannot compile
  }
}

const CLASS = String.raw`\[(?:\\.|[^\]\\])+\]`;
const COUNT = String.raw`\{(\d+)(?:,(\d+))?\}`;
const PART = new RegExp(`${CLASS}(?:${COUNT})?`, 'g');
const PLAIN = new RegExp(String.raw`^\^(?:${CLASS}(?:${COUNT})?)+\$$`);

/**
 * The shortest and longest names a pattern accepts, read from it when it is a run of
 * character classes with bounded counts (`^[a-z0-9][a-z0-9_-]{0,63}$`, the shape of the
 * server's); null for any other shape, whose bounds the page then leaves to the server.
 */
export function lengths(pattern) {
  if (!PLAIN.test(pattern)) return null;
  let min = 0;
  let max = 0;
  for (const [, low, high] of pattern.matchAll(PART)) {
    const least = low == null ? 1 : Number(low);
    min += least;
    max += high == null ? least : Number(high);
  }
  return { min, max };
}

/** The shortest and longest room names, usernames and passwords the server accepts (in
 * characters, code points); null while unknown or not to be told from the server's rules. */
export const roomLengths = () => current?.room ?? null;
export const usernameLengths = () => current?.username ?? null;
export const passwordLengths = () => current?.password ?? null;

/** The longest reaction key, in code points; null while unknown. */
export const maxEmojiChars = () => current?.maxEmojiChars ?? null;

/** The most distinct emoji on one message (v2); null while unknown. */
export const maxEmoji = () => current?.maxEmoji ?? null;

/** The longest search query the server accepts, in code points; null while unknown. */
export const maxSearchChars = () => current?.maxSearchChars ?? null;

/** The longest body the server accepts, in code points; null while unknown. */
export const maxMessageChars = () => current?.maxMessageChars ?? null;

/** The server's room pattern, for error messages; null while unknown. */
export const roomPattern = () => current?.roomPattern ?? null;

/** The server's username pattern, for error messages; null while unknown. */
export const usernamePattern = () => current?.usernamePattern ?? null;

/** True only when the server's rule is known and refuses `name`. */
export const refusesRoomName = (name) => current != null && !current.roomRe.test(name);

/** True only when the server's rule is known and refuses `name` (already lower-cased). */
export const refusesUsername = (name) => current != null && !current.usernameRe.test(name);
