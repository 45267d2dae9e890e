// Reads the live dashboard as a browser shows it, for runtime/tests/live_viewer_e2e.rs: opens
// DASHBOARD_URL in headless Chromium, waits until it shows COUNT viewer cards, prints them as one
// JSON line (per card: key, status, title, the client line, the counts) and saves a screenshot.
//
//   node cards.mjs DASHBOARD_URL COUNT SCREENSHOT.png
//
// Chromium: $CHROMIUM, else `chromium` or `chromium-browser` on PATH.
import { existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import { chromium } from "playwright-core";

const [dashboard, count, screenshot] = process.argv.slice(2);

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const dir of (process.env.PATH || "").split(delimiter)) {
    for (const name of ["chromium", "chromium-browser"]) {
      const path = join(dir, name);
      if (existsSync(path)) return path;
    }
  }
  throw new Error("no Chromium: set CHROMIUM or put chromium on PATH (runtime/tests/setup.sh installs Debian's)");
}

const browser = await chromium.launch({
  executablePath: chromiumPath(),
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
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
