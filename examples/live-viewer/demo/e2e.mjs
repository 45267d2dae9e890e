// Browser end-to-end run of the live viewer demo, driven by runtime/tests/live_viewer_e2e.rs:
// headless Chromium plays the demo page (the real Snowplow tracker + media plugin) while this
// script polls the dashboard's /api/viewers; it prints what it saw as one JSON line and saves a
// screenshot of the dashboard.
//
//   node e2e.mjs DASHBOARD_URL COLLECTOR_URL SCREENSHOT.png
import { chromium } from "playwright-core";

const [dashboard, collector, screenshot] = process.argv.slice(2);
const viewer = "e2e-viewer";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required", "--mute-audio"],
});
const seen = [];
let last = null;
async function poll() {
  const r = await fetch(`${dashboard}/api/viewers`);
  const p = (await r.json()).viewers.find((v) => v.viewer_id === viewer);
  if (p) {
    last = p;
    if (seen[seen.length - 1] !== p.status) seen.push(p.status);
  }
  return p;
}
async function until(pred, what, ms = 30000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const p = await poll();
    if (p && pred(p)) return p;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}; seen ${JSON.stringify(seen)}`);
}
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(`${dashboard}/demo/?collector=${encodeURIComponent(collector)}&user=${viewer}&ads=4,9&adSeconds=3`);
  await page.waitForFunction(() => document.getElementById("video").readyState >= 1);
  await page.evaluate(() => document.getElementById("video").play());
  await until((p) => p.status === "watching", "watching");
  await page.waitForTimeout(1000);
  await page.evaluate(() => document.getElementById("video").pause());
  await until((p) => p.status === "paused", "paused");
  await page.evaluate(() => document.getElementById("video").play());
  await until((p) => p.status === "in_ad", "the first ad break");
  await page.waitForTimeout(2300);
  await page.evaluate(() => window.weirDemo.skipAd());
  await until((p) => p.status === "watching" && p.session && p.session.ad_breaks >= 1, "watching after the ad");
  await until((p) => p.status === "in_ad" && p.session && p.session.ad_breaks >= 2, "the second ad break");
  await until((p) => p.status === "watching" && p.session && p.session.ads >= 2, "watching after the second ad");
  await page.evaluate(() => { const v = document.getElementById("video"); v.currentTime = v.duration - 1.5; });
  await until((p) => p.status === "ended", "ended", 20000);
  const dash = await browser.newPage({ viewport: { width: 1400, height: 700 } });
  await dash.goto(dashboard + "/");
  await dash.waitForSelector(".card");
  const text = await dash.textContent("main");
  await dash.screenshot({ path: screenshot });
  console.log(JSON.stringify({ seen, profile: last, dashboardText: text }));
} finally {
  await browser.close();
}
