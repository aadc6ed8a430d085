// The social demo's page script (no framework). The page lives on cdn.<domain>; it loads
// images from img.<domain>, posts and comments from api.<domain>, and chats on
// chat.<domain> -- all through the same edge, which picks the site by Host and SNI.
// Opened by an IP address, every part comes from that address instead.
// Versioned asset: the name changes with the content, so caches may keep it for a year.
"use strict";

const state = { chat: [], notifications: [], posted: [], chatOpen: false, feedLoaded: false };
window.socialDemo = state;

function base(service, scheme) {
  const host = location.hostname;
  const proto = scheme || location.protocol.replace(":", "");
  const port = location.port ? `:${location.port}` : "";
  if (/^[\d.]+$/.test(host) || !host.includes(".")) return `${proto}://${host}${port}`;
  const domain = host.split(".").slice(1).join(".");
  return `${proto}://${service}.${domain}${port}`;
}

function item(text) {
  const li = document.createElement("li");
  li.textContent = text;
  return li;
}

function showComment(comment) {
  const list = document.querySelector(`#post-${comment.post} ul`);
  if (list) list.appendChild(item(`${comment.author}: ${comment.text}`));
}

async function loadFeed() {
  const response = await fetch(`${base("api")}/api/posts`);
  const feed = await response.json();
  const posts = document.getElementById("posts");
  const select = document.getElementById("comment-post");
  for (const post of feed.posts) {
    const article = document.createElement("article");
    article.className = "post";
    article.id = `post-${post.id}`;
    const img = document.createElement("img");
    img.src = `${base("img")}${post.image}`;
    img.alt = post.title;
    const title = document.createElement("h3");
    title.textContent = `${post.title} (user ${post.author}, ${post.comments} comments)`;
    article.append(title, img, document.createElement("ul"));
    posts.appendChild(article);
    for (const comment of post.recent || []) showComment(comment);
    const option = document.createElement("option");
    option.value = option.textContent = post.id;
    select.appendChild(option);
  }
  state.feedLoaded = true;
}

async function postComment(event) {
  event.preventDefault();
  const input = document.getElementById("comment-text");
  const body = {
    post: Number(document.getElementById("comment-post").value),
    author: "you",
    text: input.value,
  };
  const response = await fetch(`${base("api")}/api/comments`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status === 201) {
    const comment = await response.json();
    state.posted.push(comment);
    showComment(comment);
    input.value = "";
  }
}

function openChat() {
  const socket = new WebSocket(`${base("chat", location.protocol === "https:" ? "wss" : "ws")}/chat`);
  const status = document.getElementById("status");
  socket.onopen = () => { state.chatOpen = true; status.textContent = "chat connected"; };
  socket.onclose = () => {
    state.chatOpen = false;
    status.textContent = "chat reconnecting…";
    setTimeout(openChat, 2000);  // a drained edge closes with 1001: DNS sends us elsewhere
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    state.chat.push(message);
    document.getElementById("chat-log").appendChild(item(`${message.author}: ${message.text}`));
  };
  document.getElementById("chat-form").onsubmit = (event) => {
    event.preventDefault();
    const input = document.getElementById("chat-text");
    socket.send(JSON.stringify({ author: "you", text: input.value }));
    input.value = "";
  };
}

function openNotifications() {
  const stream = new EventSource(`${base("api")}/api/notifications`);
  stream.addEventListener("comment", (event) => {
    const comment = JSON.parse(event.data);
    state.notifications.push(comment);
    const text = `new comment on post ${comment.post}: ${comment.text}`;
    document.getElementById("notifications").appendChild(item(text));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logo").src = `${base("img")}/img/logo.png`;
  document.getElementById("comment-form").onsubmit = postComment;
  loadFeed();
  openChat();
  openNotifications();
});
