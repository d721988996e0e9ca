// PROTOCOL.md's mention rule, as the page applies it to the signed-in user: `@` followed by
// the longest run of username characters, lower-cased, after the start of the body or a
// character that cannot be in a username (service/sql/mentioned.sql is the server's copy).
// "thanks @bob." mentions bob: the server drops a trailing `.` or `-` when only the shorter
// name is a member; the page cannot see every member, so it assumes no member is named with
// the dot ("bob." and "bob" both in one room is the rare case it gets wrong).

const MENTION = /(?<![A-Za-z0-9_.-])@([A-Za-z0-9_.-]+)/g;

/**
 * The `[start, end)` ranges of `body` that mention `me`, each from its `@` to the end of the
 * name (a dropped trailing `.` or `-` is left out of the range).
 */
export function mentionRanges(body, me) {
  const ranges = [];
  if (!me || !body) return ranges;
  for (const match of body.matchAll(MENTION)) {
    const name = match[1].toLowerCase();
    const shown = name === me ? name : name.replace(/[.-]+$/, '');
    if (shown === me) ranges.push([match.index, match.index + 1 + shown.length]);
  }
  return ranges;
}

/** Whether `body` mentions `me` by name. */
export const mentions = (body, me) => mentionRanges(body, me).length > 0;
