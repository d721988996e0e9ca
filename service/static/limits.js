// The server's lengths (GET /api/config) on the page's fields: `maxlength` and the hints
// that name them. Until the config answers, the fields have no maxlength and the hints no
// numbers, so a server whose limits differ from the usual ones never has its names or
// passwords cut short by the page (config.js: the server judges while the rules are unknown).

import * as config from './config.js';

/** Length in code points, as the server counts. */
export const codePoints = (text) => [...text].length;

/** A `maxlength` (which counts UTF-16 units) that lets through every text of at most `max`
 * code points: twice as many units, as one code point takes at most two. Null for no bound. */
export const utf16Bound = (max) => (max == null ? null : 2 * max);

const range = ({ min, max }) => (min === max ? `${max}` : `${min}–${max}`);

function setMax(id, max) {
  const el = document.getElementById(id);
  if (max == null) el.removeAttribute('maxlength');
  else el.maxLength = max;
}

/** Apply the config's lengths to the static fields (the emoji field reads them as it opens). */
export function applyLimits() {
  const room = config.roomLengths();
  const user = config.usernameLengths();
  const password = config.passwordLengths();
  // Names are ASCII by the server's patterns: a UTF-16 unit is a character.
  setMax('new-room-name', room?.max);
  setMax('browse-q', room?.max);
  for (const id of ['login-username', 'new-dm-user', 'add-member-user']) setMax(id, user?.max);
  setMax('login-password', utf16Bound(password?.max));

  const roomHint = document.getElementById('new-room-hint');
  roomHint.textContent = `Lower-case letters, digits, “-” and “_”${room ? `; up to ${room.max}` : ''}.`;
  const parts = [`Usernames ${user ? `have ${range(user)}` : 'are'} letters, digits, “_”, “.” or “-”`];
  if (password) parts.push(`passwords ${password.min}–${password.max} characters`);
  document.getElementById('login-hint').textContent = `New here? ${parts.join('; ')}.`;
}
