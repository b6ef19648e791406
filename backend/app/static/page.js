// Songbook's page, enhanced: search as you type, and more songs without leaving the page. Without
// this script every form and link still works: it asks the server for parts of the same pages.
"use strict";
(() => {
  const form = document.querySelector("form[data-live]");
  if (!form) return;
  let typing = 0;
  let pending = null;
  let lastPush = 0;

  const searchUrl = () => {
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (String(value).trim()) query.append(name, value);
    const text = query.toString();
    return text ? `/?${text}` : "/";
  };

  // The part `kind` ("results" or "rows") of the page at `url`, or null if a newer request replaced this one.
  const part = async (url, kind) => {
    pending?.abort();
    const mine = (pending = new AbortController());
    try {
      const response = await fetch(url, { headers: { "X-Songbook-Fragment": kind }, signal: mine.signal });
      if (!response.ok && response.status !== 422) {
        window.location.assign(url); // a sign-in, or an error page: shown whole
        return null;
      }
      const template = document.createElement("template");
      template.innerHTML = await response.text();
      return template.content;
    } catch (error) {
      if (error.name === "AbortError") return null;
      throw error;
    }
  };

  // The fields' errors come with the results: each goes beside its field, as the page without the script has it.
  const showFieldErrors = () => {
    for (const shown of form.querySelectorAll(".field > .error")) shown.remove();
    for (const field of form.querySelectorAll("[aria-invalid]")) {
      field.removeAttribute("aria-invalid");
      field.removeAttribute("aria-describedby");
    }
    for (const error of document.querySelectorAll("#results [data-for]")) {
      const field = form.elements.namedItem(error.dataset.for);
      if (!(field instanceof HTMLElement)) continue;
      field.setAttribute("aria-invalid", "true");
      field.setAttribute("aria-describedby", error.id);
      field.after(error);
      field.closest("details")?.setAttribute("open", "");
    }
  };

  const search = async (history) => {
    const url = searchUrl();
    const content = await part(url, "results");
    if (!content) return;
    document.getElementById("results").replaceWith(content.getElementById("results"));
    showFieldErrors();
    // Typing goes on in one history entry; a pause of a few seconds starts another, for Back.
    if (history === "push" && Date.now() - lastPush > 3000) window.history.pushState(null, "", url);
    else if (history !== "none") window.history.replaceState(null, "", url);
    lastPush = Date.now();
  };

  form.addEventListener("input", () => {
    window.clearTimeout(typing);
    typing = window.setTimeout(() => search("push"), 250);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    window.clearTimeout(typing);
    lastPush = 0;
    search("push");
  });
  window.addEventListener("popstate", () => {
    const query = new URLSearchParams(window.location.search);
    for (const field of form.elements) {
      if (!field.name) continue;
      if (field.type === "checkbox") field.checked = query.has(field.name);
      else field.value = query.get(field.name) ?? "";
    }
    search("none");
  });
  document.addEventListener("click", async (event) => {
    const more = event.target.closest("a.more");
    if (!more || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    const content = await part(more.href, "rows");
    if (!content) return;
    const added = [...content.querySelectorAll("tbody > tr")];
    document.getElementById("rows").append(...added);
    // The link pressed is replaced: the keyboard goes on from the first song added, not from the top.
    added[0]?.querySelector("a")?.focus();
    document.getElementById("paging").replaceWith(...content.querySelectorAll("p.error"), content.getElementById("paging"));
  });
})();
