// A room's members and settings (GET /api/rooms/{room}/members): who is in it and with which
// role; adding and removing members and setting roles where the caller's role allows
// (PROTOCOL.md, Member); leaving the room for good. The controls follow the same rules as the
// server, which stays the judge: a refusal is shown as it comes.

import * as api from './api.js';
import * as config from './config.js';
import { Modal, announce, setError } from './dialog.js';
import { KIND_TEXT, h, userName } from './render.js';
import { UserPicker } from './user-picker.js';

const ROLES = ['member', 'moderator', 'owner'];
const ROLE_TEXT = { owner: 'Owner', moderator: 'Moderator', member: 'Member' };
const WITH_ARTICLE = { owner: 'an owner', moderator: 'a moderator', member: 'a member' };

/** The rights a member acts with: an admin who is a member acts as an owner. */
export const rightsOf = (role, admin) => (admin && role ? 'owner' : role);

/** The roles the caller may give a new member, or [] when they may not add anyone. */
export function addableRoles(kind, rights) {
  if (kind !== 'private') return [];
  if (rights === 'owner') return ROLES;
  if (rights === 'moderator') return ['member', 'moderator'];
  return [];
}

/** The roles the caller may set on `target` (its current one included), or null. */
export function settableRoles(kind, rights, target) {
  if (kind === 'dm') return null;
  if (rights === 'owner') return ROLES;
  if (rights === 'moderator' && target.role === 'member') return ['member', 'moderator'];
  return null;
}

export const canRemove = (kind, rights, target, me) => kind === 'private' && target.username !== me
  && (rights === 'owner' || (rights === 'moderator' && target.role === 'member'));

export class MembersDialog {
  /** The room shown, or null. */
  room = null;
  #info = null;
  #members = [];
  #cursor = null;
  #asked = 0;
  #modal;
  #el;
  #picker;
  #busy = false;

  /**
   * @param {{me: string, admin(): boolean, onLeft(room: string): void,
   *   label(room: string, info: object): string}} ctx
   * @param {AbortSignal} signal
   */
  constructor(ctx, signal) {
    const $ = (id) => document.getElementById(id);
    this.ctx = ctx;
    this.#el = {
      title: $('members-title'), sub: $('members-sub'), status: $('members-status'),
      list: $('members-list'), more: $('members-more'), error: $('members-error'),
      addForm: $('add-member-form'), addUser: $('add-member-user'), addRole: $('add-member-role'),
      leave: $('leave-room'), leaveStart: $('leave-start'), leaveConfirm: $('leave-confirm'),
      leaveQuestion: $('leave-question'), leaveCancel: $('leave-cancel'),
      leaveButton: $('leave-confirm-button'),
    };
    const on = (el, type, fn) => el.addEventListener(type, fn, { signal });
    this.#modal = new Modal($('members-dialog'), {
      onClose: () => {
        this.room = null;
        this.#picker.close();
      },
      fallback: () => document.getElementById('composer'),
    }, signal);
    this.#picker = new UserPicker(this.#el.addUser, {
      exclude: () => this.#members.map((m) => m.username),
    }, signal);
    on(this.#el.more, 'click', () => this.#loadMembers(false));
    on(this.#el.addForm, 'submit', (e) => {
      e.preventDefault();
      this.#add();
    });
    on(this.#el.list, 'change', (e) => {
      const select = e.target.closest('select[data-username]');
      if (select) this.#setRole(select);
    });
    on(this.#el.list, 'click', (e) => {
      const button = e.target.closest('button[data-remove]');
      if (button) this.#remove(button.dataset.remove);
    });
    on(this.#el.leaveStart, 'click', () => this.#askLeave(true));
    on(this.#el.leaveCancel, 'click', () => this.#askLeave(false));
    on(this.#el.leaveButton, 'click', () => this.#leave());
  }

  get isOpen() {
    return this.#modal.isOpen;
  }

  /** Show `room`'s members; `info` is what the sidebar knows of it (kind, role, peer). */
  async open(room, info) {
    this.room = room;
    this.#info = info ?? null;
    this.#members = [];
    this.#el.list.replaceChildren();
    setError(this.#el.error, '');
    this.#picker.clear();
    this.#askLeave(false);
    this.#renderHead();
    this.#modal.open(this.#el.title); // read out first; Tab goes on to the controls
    await this.refresh();
  }

  close() {
    this.#modal.close();
  }

  /** Read the room and its members again (a `member` event, a `rooms` frame, an action). */
  async refresh() {
    const room = this.room;
    if (!room) return;
    try {
      this.#info = await api.roomInfo(room);
    } catch (err) {
      if (room !== this.room) return;
      setError(this.#el.error, err.status === 403 || err.status === 404
        ? `You are no longer a member of ${this.ctx.label(room, this.#info)}.` : err.message);
      this.#el.addForm.hidden = true;
      this.#el.leave.hidden = true;
      return;
    }
    if (room !== this.room) return;
    this.#renderHead();
    await this.#loadMembers(true);
  }

  #rights() {
    return rightsOf(this.#info?.role ?? null, this.ctx.admin());
  }

  #renderHead() {
    const info = this.#info;
    const kind = info?.kind ?? null;
    const label = this.ctx.label(this.room, info);
    this.#el.title.textContent = kind === 'dm' ? `Conversation with ${label}` : `Members of #${label}`;
    const role = info?.role;
    const parts = [];
    if (kind === 'dm') parts.push('Direct message: only the two of you can read it.');
    else if (kind === 'private') parts.push(`${KIND_TEXT.private}: only its members can read it.`);
    else if (kind === 'public') parts.push(`${KIND_TEXT.public}: anyone can find and join it.`);
    if (role && kind !== 'dm') parts.push(`You are ${WITH_ARTICLE[role] ?? role}.`);
    this.#el.sub.textContent = parts.join(' ');

    const roles = addableRoles(kind, this.#rights());
    this.#el.addForm.hidden = roles.length === 0;
    if (roles.length) {
      const chosen = this.#el.addRole.value || 'member';
      this.#el.addRole.replaceChildren(...roles.map((r) => h('option', { value: r }, ROLE_TEXT[r])));
      this.#el.addRole.value = roles.includes(chosen) ? chosen : 'member';
    }
    this.#el.leave.hidden = !role || kind === 'dm';
  }

  async #loadMembers(fresh) {
    const room = this.room;
    const asked = ++this.#asked;
    this.#el.list.setAttribute('aria-busy', 'true');
    let page;
    try {
      page = await api.members(room, fresh ? null : this.#cursor);
    } catch (err) {
      if (asked === this.#asked) {
        this.#el.list.removeAttribute('aria-busy');
        setError(this.#el.error, `Could not load the members: ${err.message}`);
      }
      return;
    }
    if (asked !== this.#asked || room !== this.room) return;
    this.#el.list.removeAttribute('aria-busy');
    this.#members = fresh ? page.members : [...this.#members, ...page.members];
    this.#cursor = page.next_cursor ?? null;
    this.#renderMembers();
  }

  #renderMembers() {
    const kind = this.#info?.kind ?? null;
    const rights = this.#rights();
    const me = this.ctx.me;
    const focused = document.activeElement?.dataset?.focusKey;
    this.#el.list.replaceChildren(...this.#members.map((member) => {
      const name = member.username;
      const roles = settableRoles(kind, rights, member);
      const control = roles
        ? h('select', {
          class: 'role-select', 'data-username': name, 'data-testid': 'member-role',
          'aria-label': `Role of ${name}`, 'data-focus-key': `role:${name}`,
        }, roles.map((r) => h('option', { value: r, selected: r === member.role }, ROLE_TEXT[r])))
        : h('span', { class: `role-badge role-${member.role}`, 'data-testid': 'member-role-text' },
          ROLE_TEXT[member.role] ?? member.role);
      const remove = canRemove(kind, rights, member, me)
        ? h('button', {
          type: 'button', class: 'btn btn-ghost btn-small', 'data-remove': name,
          'data-testid': 'member-remove', 'aria-label': `Remove ${name}`,
          'data-focus-key': `remove:${name}`,
        }, 'Remove')
        : null;
      return h('li', { class: 'listed', 'data-testid': 'member', 'data-username': name, 'data-role': member.role },
        h('span', { class: 'listed-main' },
          h('span', { class: 'listed-name' }, userName(name, me, 'listed-user'),
            name === me ? h('span', { class: 'you' }, ' (you)') : null)),
        control, remove);
    }));
    if (focused) this.#el.list.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`)?.focus();
    const n = this.#members.length;
    this.#el.more.hidden = !this.#cursor;
    this.#el.status.textContent = `${n} member${n === 1 ? '' : 's'}${this.#cursor ? ' shown; more below' : ''}.`;
  }

  async #add() {
    if (this.#busy) return;
    const name = this.#picker.value;
    const role = this.#el.addRole.value || 'member';
    const room = this.room;
    let problem = '';
    if (!name) problem = 'Type the username of the person to add.';
    else if (config.refusesUsername(name)) problem = `No one can be called ${name}.`;
    else if (this.#members.some((m) => m.username === name)) problem = `${name} is already a member.`;
    if (problem) {
      setError(this.#el.error, problem);
      this.#el.addUser.focus();
      return;
    }
    await this.#act(async () => {
      await api.putMember(room, name, role === 'member' ? null : role);
      this.#picker.clear();
      announce(`${name} added to ${room} as ${WITH_ARTICLE[role]}.`);
      this.#el.addUser.focus();
    }, (err) => refusal(err, name));
  }

  async #setRole(select) {
    const name = select.dataset.username;
    const role = select.value;
    const was = this.#members.find((m) => m.username === name)?.role;
    await this.#act(async () => {
      await api.putMember(this.room, name, role);
      announce(`${name} is now ${WITH_ARTICLE[role]}.`);
    }, (err) => {
      select.value = was ?? select.value;
      return refusal(err, name);
    });
  }

  async #remove(name) {
    await this.#act(async () => {
      await api.deleteMember(this.room, name);
      announce(`${name} removed from ${this.room}.`);
      this.#el.addUser.focus();
    }, (err) => refusal(err, name));
  }

  #askLeave(asking) {
    const room = this.room;
    this.#el.leaveConfirm.hidden = !asking;
    this.#el.leaveStart.hidden = asking;
    if (!asking) return;
    const label = this.ctx.label(room, this.#info);
    this.#el.leaveQuestion.textContent = this.#info?.kind === 'private'
      ? `Leave #${label} for good? Only an owner or moderator can add you again.`
      : `Leave #${label}? It leaves your list; you can join again any time.`;
    this.#el.leaveCancel.focus();
  }

  async #leave() {
    const room = this.room;
    await this.#act(async () => {
      await api.deleteMember(room, 'me');
      this.room = null;
      this.#modal.close();
      this.ctx.onLeft(room);
    }, (err) => {
      if (err.status === 409) {
        return `You are the last owner of #${this.ctx.label(room, this.#info)}, so you cannot leave it `
          + 'yet: make another member an owner first (or remove everyone else).';
      }
      return refusal(err, 'you');
    }, false);
  }

  /** Run one change; on a refusal show `explain(err)`; then read the members again. */
  async #act(change, explain, refresh = true) {
    if (this.#busy) return;
    this.#busy = true;
    setError(this.#el.error, '');
    const dialog = this.#el.list.closest('dialog');
    dialog.setAttribute('aria-busy', 'true');
    try {
      await change();
    } catch (err) {
      setError(this.#el.error, explain(err));
    } finally {
      this.#busy = false;
      dialog.removeAttribute('aria-busy');
    }
    if (refresh && this.room) await this.refresh();
  }
}

function refusal(err, name) {
  switch (err.status) {
    case 403: return `Not allowed: ${err.message}.`;
    case 404: return err.message ? `${capitalise(err.message)}.` : `There is no user named ${name}.`;
    case 409: return `${capitalise(err.message)}.`;
    case 429: return 'Too many changes at once. Wait a moment and try again.';
    default: return err.message || `Something went wrong (HTTP ${err.status}).`;
  }
}

const capitalise = (text) => (text ? text[0].toUpperCase() + text.slice(1) : text);
