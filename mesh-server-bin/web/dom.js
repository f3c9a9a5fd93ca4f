// DOM helpers. Everything a user typed reaches the page as text
// (textContent, attributes via setAttribute), never as HTML.

/** Builds an element: `el('li', {class: 'x', dataset: {id}}, 'text', child)`. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

export function show(node, visible = true) {
  node.hidden = !visible;
}

/** "14:03", or "Mar 3, 14:03" for another day. */
export function formatTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })}, ${time}`;
}

/** A short random id (for client_id and request ids). */
export function randomId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export function displayName(user) {
  return (user && (user.display_name || user.username)) || 'someone';
}

let toastTimer = null;
/** A short notice at the bottom of the page, gone after 4 s. */
export function toast(text) {
  const node = $('toast');
  node.textContent = text;
  show(node);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => show(node, false), 4000);
}
