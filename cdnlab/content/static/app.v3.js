// Versioned asset: the name changes with the content, so caches may keep it for a year.
async function showPosts() {
  const response = await fetch("/api/posts");
  const feed = await response.json();
  const section = document.getElementById("posts");
  for (const post of feed.posts) {
    const item = document.createElement("article");
    item.className = "post";
    item.textContent = `${post.title} (by user ${post.author}, ${post.comments} comments)`;
    section.appendChild(item);
  }
}
document.addEventListener("DOMContentLoaded", showPosts);
