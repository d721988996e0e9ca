// The scrollable message area, shared by every room view.
//
// Its whole job is scroll behaviour that feels right:
//  - a reader at the bottom stays at the bottom as messages arrive;
//  - a reader scrolled up is never moved: new messages raise a "new messages ↓" pill instead;
//  - older pages prepended above keep the visible messages exactly where they were;
//  - near either end of what a room has loaded, the room is asked for the next page;
//  - each room remembers where its reader was when they switch away and back.

const BOTTOM_SLACK_PX = 48;
const NEAR_TOP_PX = 400;

export class MessagePane {
  /** The RoomView on display, or null. */
  current = null;

  #scroller;
  #pill;
  #hooks;
  /** Whether the reader was at the bottom before the current batch of appends; null = no batch. */
  #stick = null;
  #frame = 0;
  /** A "load older?" check arrived while a scroll-to-bottom was pending; redo it after. */
  #checkTopAfterSettle = false;

  /**
   * @param {HTMLElement} scroller the overflow:auto element
   * @param {HTMLElement} pill the "new messages" button
   * @param {{onNearTop(view): void, onNearBottom(view): void, onAtBottom(view): void,
   *   onLatest(view): void}} hooks (onLatest: the pill was clicked while the newest messages
   *   are not loaded)
   * @param {AbortSignal} signal removes the listeners when the session ends
   */
  constructor(scroller, pill, hooks, signal) {
    this.#scroller = scroller;
    this.#pill = pill;
    this.#hooks = hooks;
    scroller.addEventListener('scroll', () => this.#onScroll(), { passive: true, signal });
    pill.addEventListener('click', () => {
      if (this.current?.hasNewer) hooks.onLatest(this.current);
      else this.scrollToBottom();
    }, { signal });
  }

  show(view) {
    if (this.current === view) return;
    const old = this.current;
    if (old) {
      old.savedScroll = this.atBottom() ? null : this.#scroller.scrollTop;
      old.el.remove();
    }
    cancelAnimationFrame(this.#frame);
    this.#frame = 0;
    this.#stick = null;
    this.#checkTopAfterSettle = false;
    this.current = view;
    if (view) {
      this.#scroller.append(view.el);
      if (view.savedScroll == null) this.scrollToBottom();
      else this.#scroller.scrollTop = view.savedScroll;
    }
    this.#updatePill();
  }

  atBottom() {
    const s = this.#scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight <= BOTTOM_SLACK_PX;
  }

  scrollToBottom() {
    this.#scroller.scrollTop = this.#scroller.scrollHeight;
    if (this.current) this.current.unseenBelow = false;
    this.#updatePill();
  }

  /**
   * Call BEFORE adding rows at the end of `view`. Several appends in a row (a replay burst) are
   * measured once and settled once, in the next animation frame.
   * @param {{force?: boolean, notify?: boolean}} opts force: scroll down whatever the reader
   *   was doing (their own new message); notify: the rows are news worth a pill.
   */
  beforeAppend(view, { force = false, notify = false } = {}) {
    if (view !== this.current) {
      // Off-screen: a view left at the bottom will simply open at the bottom; one left
      // scrolled up gets the pill when it is shown again.
      if (force) view.savedScroll = null;
      else if (notify && view.savedScroll != null) view.unseenBelow = true;
      return;
    }
    this.#stick ??= this.atBottom();
    if (force) this.#stick = true;
    if (notify && !this.#stick) {
      view.unseenBelow = true;
      this.#updatePill();
    }
    this.#frame ||= requestAnimationFrame(() => this.#settle());
  }

  /**
   * Run `mutate` (which adds or changes content ABOVE what the reader sees) without moving
   * what they see: measure scrollHeight before and after and shift scrollTop by the difference.
   * `overflow-anchor: none` in CSS keeps the browser's own scroll anchoring from doing it twice.
   */
  preserve(view, mutate) {
    if (view !== this.current) {
      mutate();
      return;
    }
    const s = this.#scroller;
    const wasAtBottom = this.#stick ?? this.atBottom();
    const height = s.scrollHeight;
    const top = s.scrollTop;
    mutate();
    s.scrollTop = wasAtBottom ? s.scrollHeight : top + (s.scrollHeight - height);
  }

  /** Whether `el` (in `view`, on display) lies wholly above what the reader sees. */
  isAbove(view, el) {
    if (view !== this.current) return false;
    return el.getBoundingClientRect().bottom <= this.#scroller.getBoundingClientRect().top;
  }

  /** Scroll so that `row` is in the middle of the view (a jump to a reply's original). */
  reveal(view, row) {
    if (view !== this.current) return;
    cancelAnimationFrame(this.#frame); // a pending stick-to-bottom must not undo the jump
    this.#frame = 0;
    this.#stick = null;
    const s = this.#scroller;
    const offset = row.getBoundingClientRect().top - s.getBoundingClientRect().top;
    s.scrollTop += offset - (s.clientHeight - row.offsetHeight) / 2;
  }

  /** Ask for older messages while the reader is near the top, or the content is too short to
   * scroll at all (otherwise no scroll event would ever fire to ask). */
  maybeLoadOlder(view) {
    if (view !== this.current) return;
    if (this.#frame) {
      // Rows were just appended and the jump to the bottom has not happened yet, so scrollTop
      // still reads near 0: asking now would fetch a page nobody scrolled up for.
      this.#checkTopAfterSettle = true;
      return;
    }
    if (this.#scroller.scrollTop < NEAR_TOP_PX) this.#hooks.onNearTop(view);
  }

  /** Ask for newer messages while the reader is near the bottom of a room whose newest
   * messages are not loaded (it dropped them to stay bounded). */
  maybeLoadNewer(view) {
    if (view !== this.current || !view.hasNewer) return;
    const s = this.#scroller;
    if (s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_TOP_PX) this.#hooks.onNearBottom(view);
  }

  /** Which end of `view`'s messages lies farther from what the reader sees ('newest' or
   * 'oldest'): the one to drop when it holds too many. */
  farSide(view) {
    if (view !== this.current) return view.savedScroll == null ? 'oldest' : 'newest';
    if (this.#stick) return 'oldest'; // rows were just appended under a reader at the bottom
    const s = this.#scroller;
    return s.scrollTop + s.clientHeight / 2 < s.scrollHeight / 2 ? 'newest' : 'oldest';
  }

  #settle() {
    this.#frame = 0;
    const stick = this.#stick;
    this.#stick = null;
    if (stick) this.scrollToBottom();
    if (this.current && this.atBottom()) this.#hooks.onAtBottom(this.current);
    if (this.#checkTopAfterSettle) {
      this.#checkTopAfterSettle = false;
      if (this.current) this.maybeLoadOlder(this.current);
    }
  }

  #onScroll() {
    const view = this.current;
    if (!view) return;
    if (this.atBottom()) {
      if (view.unseenBelow) {
        view.unseenBelow = false;
        this.#updatePill();
      }
      this.#hooks.onAtBottom(view);
    }
    this.maybeLoadOlder(view);
    this.maybeLoadNewer(view);
  }

  #updatePill() {
    this.#pill.hidden = !this.current?.unseenBelow;
  }
}
