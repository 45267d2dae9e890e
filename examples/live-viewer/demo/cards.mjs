// Reads the live dashboard as a browser shows it, for runtime/tests/live_viewer_e2e.rs: opens
// DASHBOARD_URL in headless Chromium, waits until it shows COUNT viewer cards, prints them as one
// JSON line (per card: key, status, title, the client line, the counts) and saves a screenshot.
//
//   node cards.mjs DASHBOARD_URL COUNT SCREENSHOT.png
//
// Chromium: $CHROMIUM, else `chromium` or `chromium-browser` on PATH.
import { launch } from "./chromium.mjs";

const [dashboard, count, screenshot] = process.argv.slice(2);

const browser = await launch();
try {
  const dash = await browser.newPage({ viewport: { width: 1400, height: 500 } });
  dash.on("pageerror", (e) => console.error("dashboard page error:", e.message));
  await dash.goto(dashboard + "/");
  await dash.waitForFunction((n) => document.querySelectorAll(".card").length >= n, Number(count),
    { timeout: 30000 });
  const cards = await dash.evaluate(() => [...document.querySelectorAll(".card")].map((c) => {
    const stats = {};
    for (const d of c.querySelectorAll(".stats div")) {
      stats[d.querySelector("span").textContent] = d.querySelector("b").textContent;
    }
    return {
      key: c.dataset.key,
      status: c.querySelector(".status").textContent.replace(" ", "_"),
      title: c.querySelector(".title").textContent,
      client: c.querySelector(".client").textContent,
      stats,
    };
  }));
  await dash.screenshot({ path: screenshot });
  console.log(JSON.stringify(cards));
} finally {
  await browser.close();
}
