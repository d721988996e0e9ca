// A message's local copy and PROTOCOL.md's `version` rule, without the DOM.
//
// A `message` frame or a REST message replaces the local copy only if its `version` is greater;
// an `edit`, `delete` or `reaction` event applies only if its `seq` is greater than the local
// `version`, and then sets `version` to that seq. Whatever order replay, REST pages and live
// frames bring them in, the copy ends in the state a fresh load would give.

/** A message as the page keeps it: every v2 field present (a v1 server sends none). */
export function normalize(msg) {
  return {
    room: msg.room,
    seq: msg.seq,
    author: msg.author,
    body: msg.deleted ? '' : msg.body ?? '',
    created_at: msg.created_at ?? null,
    client_id: msg.client_id ?? null,
    reply_to: Number.isInteger(msg.reply_to) ? msg.reply_to : null,
    edited_at: msg.edited_at ?? null,
    deleted: msg.deleted === true,
    reactions: Array.isArray(msg.reactions) ? msg.reactions.map((r) => ({ ...r })) : [],
    version: Number.isInteger(msg.version) ? msg.version : msg.seq,
  };
}

/**
 * The copy to keep when `incoming` (a message frame or a REST message) meets `local`: the
 * incoming one when its version is greater, else null (keep local). Live fan-out carries no
 * `me`: what the page knew of its own reactions is kept for the emoji still there.
 */
export function newer(local, incoming) {
  const next = normalize(incoming);
  if (local && next.version <= local.version) return null;
  if (local) {
    const mine = new Map(local.reactions.map((r) => [r.emoji, r.me === true]));
    for (const r of next.reactions) {
      if (typeof r.me !== 'boolean') r.me = mine.get(r.emoji) ?? false;
    }
  } else {
    for (const r of next.reactions) if (typeof r.me !== 'boolean') r.me = false;
  }
  return next;
}

/** The copy after an `edit`, `delete` or `reaction` event, or null when it does not apply. */
export function applyEvent(local, event, me) {
  if (!Number.isInteger(event.seq) || event.seq <= local.version) return null;
  const next = { ...local, version: event.seq, reactions: local.reactions.map((r) => ({ ...r })) };
  switch (event.type) {
    case 'edit':
      if (!local.deleted) {
        next.body = event.body ?? '';
        next.edited_at = event.edited_at ?? next.edited_at;
      }
      break;
    case 'delete':
      next.deleted = true;
      next.body = '';
      next.reactions = [];
      break;
    case 'reaction': {
      if (local.deleted) break;
      const i = next.reactions.findIndex((r) => r.emoji === event.emoji);
      const mine = event.user === me ? event.op === 'add' : null;
      if (event.count > 0) {
        if (i < 0) next.reactions.push({ emoji: event.emoji, count: event.count, me: mine === true });
        else {
          next.reactions[i].count = event.count;
          if (mine !== null) next.reactions[i].me = mine;
        }
      } else if (i >= 0) {
        next.reactions.splice(i, 1); // added again, it goes last
      }
      break;
    }
    default:
      return null;
  }
  return next;
}
