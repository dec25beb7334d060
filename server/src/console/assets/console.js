// learnsync console: refreshes the live parts of a page without reloading it. Elements with
// data-live are replaced by the HTML fragment their URL returns; a tbody with data-follow gets the
// log rows after its data-after sequence appended. Every value in those fragments was escaped by
// the server; nothing here builds HTML from data.
"use strict";

(function () {
  const REFRESH_MS = 1000;

  function stamp() {
    const updated = document.getElementById("updated");
    if (updated) {
      updated.textContent = "Last update " + new Date().toLocaleTimeString() + ".";
    }
  }

  async function fetchText(url) {
    const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      // The session ended: show the sign-in page instead of refreshing silently forever.
      window.location.assign("/sign-in");
      return null;
    }
    if (!response.ok) {
      return null;
    }
    return { text: await response.text(), headers: response.headers };
  }

  function refresh(element) {
    const url = element.dataset.live;
    const tick = async function () {
      try {
        const answer = await fetchText(url);
        if (answer !== null) {
          element.innerHTML = answer.text;
          stamp();
        }
      } catch (error) {
        // A network hiccup: try again on the next tick.
      }
      window.setTimeout(tick, REFRESH_MS);
    };
    window.setTimeout(tick, REFRESH_MS);
  }

  function follow(tbody) {
    const base = tbody.dataset.follow;
    const tick = async function () {
      try {
        const separator = base.includes("?") ? "&" : "?";
        const answer = await fetchText(base + separator + "after=" + tbody.dataset.after);
        if (answer !== null) {
          const last = answer.headers.get("x-last-sequence");
          if (answer.text.trim() !== "") {
            const atBottom =
              window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
            tbody.insertAdjacentHTML("beforeend", answer.text);
            if (atBottom && !window.location.hash) {
              window.scrollTo(0, document.body.scrollHeight);
            }
          }
          if (last !== null) {
            tbody.dataset.after = last;
          }
          stamp();
        }
      } catch (error) {
        // A network hiccup: try again on the next tick.
      }
      window.setTimeout(tick, REFRESH_MS);
    };
    window.setTimeout(tick, REFRESH_MS);
  }

  function start() {
    document.querySelectorAll("[data-live]").forEach(refresh);
    document.querySelectorAll("[data-follow]").forEach(follow);
    // The level filter applies as soon as it is chosen.
    const level = document.getElementById("level");
    if (level && level.form) {
      level.addEventListener("change", function () {
        level.form.submit();
      });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
