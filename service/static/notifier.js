// System notifications (the Notification API) for mentions while the page is hidden. The
// browser asks for permission only from the user's click on the sidebar's button, never on
// load; once it is granted the button turns them off and on (remembered per user in
// localStorage). A notification is shown for a `notification` frame (a message that
// mentions the user, every message of a dm) while the page is hidden; clicking it opens
// the room.

import { announce } from './dialog.js';

const supported = () => typeof window.Notification === 'function';

export class Notifier {
  #button;
  #key;
  #onOpen;

  /**
   * @param {HTMLButtonElement} button the sidebar's toggle
   * @param {string} me
   * @param {(room: string) => void} onOpen a notification was clicked
   * @param {AbortSignal} signal
   */
  constructor(button, me, onOpen, signal) {
    this.#button = button;
    this.#key = `chat.notify.${me}`;
    this.#onOpen = onOpen;
    button.addEventListener('click', () => this.#toggle(), { signal });
    this.#render();
  }

  /** A `notification` frame: {room, seq, author, excerpt}; `label` names the room ("#ops"),
   * null for a dm. */
  notify({ room, seq, author, excerpt }, label) {
    if (!this.#on() || !document.hidden) return;
    const note = new Notification(label ? `${author} in ${label}` : author, {
      body: typeof excerpt === 'string' ? excerpt : '', tag: `${room}:${seq}`,
    });
    note.addEventListener('click', () => {
      window.focus();
      this.#onOpen(room);
      note.close();
    });
  }

  #on() {
    return supported() && Notification.permission === 'granted' && this.#stored() !== 'off';
  }

  #stored() {
    try {
      return localStorage.getItem(this.#key);
    } catch {
      return null; // storage disabled: on while the permission lasts
    }
  }

  async #toggle() {
    if (!supported()) return;
    if (Notification.permission === 'default') {
      await Notification.requestPermission();
      this.#store('on');
    } else if (Notification.permission === 'granted') {
      this.#store(this.#on() ? 'off' : 'on');
    }
    this.#render();
    announce(this.#status());
  }

  #store(value) {
    try {
      localStorage.setItem(this.#key, value);
    } catch {
      // privacy mode: the choice lasts for this page only (the permission stays)
    }
  }

  #status() {
    if (Notification.permission === 'denied') {
      return 'Notifications are blocked in this browser’s settings for this site.';
    }
    return this.#on() ? 'Notifications of mentions are on.' : 'Notifications of mentions are off.';
  }

  #render() {
    const button = this.#button;
    button.hidden = !supported();
    if (button.hidden) return;
    const permission = Notification.permission;
    button.setAttribute('aria-pressed', String(this.#on()));
    button.disabled = permission === 'denied';
    button.title = this.#status();
    button.dataset.permission = permission;
  }
}
