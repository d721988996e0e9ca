// The `member` events of a private room between two seqs, read back from its log.
//
// History pages (GET .../messages) carry messages only, so the lines "alice added bob" that
// sit between the messages of a page come from GET .../events, which carries every kind of
// event: this keeps the `member` ones.

import { fetchEvents } from './api.js';

const EVENTS_PAGE = 1000;
/** Bound on the log pages read for one range: a range of one history page that holds more
 * events than this (reactions, edits) shows the member lines of its first part only. */
const PAGES_MAX = 10;

/** The `member` frames with `after` < seq < `before` (`before` may be Infinity), ascending. */
export async function memberEvents(room, after, before) {
  const found = [];
  let cursor = after;
  for (let i = 0; i < PAGES_MAX; i += 1) {
    const page = await fetchEvents(room, { after: cursor, limit: EVENTS_PAGE });
    const events = (page?.events ?? []).filter((e) => Number.isInteger(e.seq) && e.seq > cursor);
    for (const event of events) {
      if (event.seq >= before) return found;
      if (event.type === 'member') found.push(event);
    }
    if (page?.has_more !== true || events.length === 0) break;
    cursor = events.at(-1).seq;
  }
  return found;
}
