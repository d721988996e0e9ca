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
    // The seq as of which the `me` of each reaction is known (see newer and applyEvent).
    meSeq: 0,
  };
}

/**
 * The copy to keep when `incoming` (a message frame or a REST message) meets `local`: the
 * incoming one when its version is greater, else null (keep local). Live fan-out carries no
 * `me`: then what the page knew of its own reactions is kept for the emoji still there, and
 * the user's own `reaction` events keep teaching it (applyEvent).
 */
export function newer(local, incoming) {
  const next = normalize(incoming);
  if (local && next.version <= local.version) return null;
  if (next.reactions.every((r) => typeof r.me === 'boolean')) {
    next.meSeq = next.version; // addressed to this user (or without reactions): it knows
  } else if (local) {
    next.meSeq = local.meSeq;
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
  if (!Number.isInteger(event.seq)) return null;
  const mine = event.type === 'reaction' && event.user === me && event.seq > local.meSeq;
  if (event.seq <= local.version) {
    // Too old for the counts, but it is news of the user's own reaction that a copy without
    // `me` (a live read-back) could not give: events reach a connection in seq order.
    if (!mine) return null;
    return {
      ...local,
      meSeq: event.seq,
      reactions: local.reactions.map((r) => ({
        ...r, me: r.emoji === event.emoji ? event.op === 'add' : r.me,
      })),
    };
  }
  const next = { ...local, version: event.seq, reactions: local.reactions.map((r) => ({ ...r })) };
  if (mine) next.meSeq = event.seq;
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
