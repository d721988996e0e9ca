// "Create a room" (POST /api/rooms): a name and a kind, private or public. The new room joins
// the sidebar and opens.

import * as api from './api.js';
import * as config from './config.js';
import { Modal, announce, setError } from './dialog.js';

export class NewRoomDialog {
  #modal;
  #form;
  #name;
  #error;
  #busy = false;

  /**
   * @param {{onCreating(name: string): void, onCreated(room: object): void}} hooks
   * @param {AbortSignal} signal
   */
  constructor(hooks, signal) {
    const $ = (id) => document.getElementById(id);
    this.#modal = new Modal($('new-room-dialog'), {}, signal);
    this.#form = $('new-room-form');
    this.#name = $('new-room-name');
    this.#error = $('new-room-error');
    this.hooks = hooks;
    this.#form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#submit();
    }, { signal });
  }

  open() {
    this.#form.reset();
    setError(this.#error, '');
    this.#name.removeAttribute('aria-invalid');
    this.#modal.open(this.#name);
  }

  close() {
    this.#modal.close();
  }

  async #submit() {
    if (this.#busy) return;
    const name = this.#name.value.trim().replace(/^#/, '').toLowerCase();
    const kind = new FormData(this.#form).get('kind') === 'public' ? 'public' : 'private';
    let problem = '';
    if (!name) problem = 'Type a name for the room.';
    else if (config.refusesRoomName(name)) {
      problem = `Not a valid room name: names must match ${config.roomPattern()}`;
    }
    if (problem) {
      this.#invalid(problem);
      return;
    }
    this.#busy = true;
    this.#form.setAttribute('aria-busy', 'true');
    this.hooks.onCreating(name);
    try {
      const room = await api.createRoom(name, kind);
      this.#modal.close();
      announce(`${kind === 'private' ? 'Private' : 'Public'} room ${name} created.`);
      this.hooks.onCreated(room);
    } catch (err) {
      this.#invalid(refusal(err, name));
    } finally {
      this.#busy = false;
      this.#form.removeAttribute('aria-busy');
    }
  }

  #invalid(message) {
    setError(this.#error, message);
    this.#name.setAttribute('aria-invalid', 'true');
    this.#name.focus();
  }
}

function refusal(err, name) {
  switch (err.status) {
    case 409: return `A room named ${name} already exists. Pick another name.`;
    case 403: return err.message || 'Names beginning “dm-” are reserved for direct messages.';
    case 422: return `Not accepted: ${err.message}`;
    case 429: return 'You have created many rooms lately. Wait a while and try again.';
    default: return err.message || `Something went wrong (HTTP ${err.status}).`;
  }
}
