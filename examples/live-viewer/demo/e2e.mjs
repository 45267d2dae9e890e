// Browser end-to-end run of the live viewer demo, driven by runtime/tests/live_viewer_e2e.rs:
// headless Chromium plays the demo page (the real Snowplow tracker + media plugin) while a second
// page shows the dashboard, and this script reads what that dashboard page renders: the viewer's
// card in the DOM (status, title, ad counts), every status the card showed (a MutationObserver),
// never the JSON API. It prints what it saw as one JSON line and saves a screenshot of the
// dashboard.
//
//   node e2e.mjs DASHBOARD_URL COLLECTOR_URL SCREENSHOT.png
//
// Chromium: $CHROMIUM, else `chromium` or `chromium-browser` on PATH.
import { launch } from "./chromium.mjs";

const [dashboard, collector, screenshot] = process.argv.slice(2);
const viewer = "e2e-viewer";

const browser = await launch(["--disable-quic", "--autoplay-policy=no-user-gesture-required",
  "--mute-audio"]);
try {
  // The dashboard first, connected to the live stream before anything is played.
  const dash = await browser.newPage({ viewport: { width: 1400, height: 700 } });
  dash.on("pageerror", (e) => console.error("dashboard page error:", e.message));
  await dash.goto(dashboard + "/");
  await dash.waitForSelector("#conn.ok");
  // Every status the viewer's card shows, in order, as the page renders it.
  await dash.evaluate((viewer) => {
    window.e2eSeen = [];
    const look = () => {
      const status = document.querySelector(`.card[data-key="${viewer}"] .status`);
      const s = status && status.textContent.replace(" ", "_");
      if (s && window.e2eSeen[window.e2eSeen.length - 1] !== s) window.e2eSeen.push(s);
    };
    new MutationObserver(look).observe(document.getElementById("cards"),
      { childList: true, subtree: true, characterData: true });
  }, viewer);

  // The viewer's card as shown: status, title, the ad line, and the counts under it.
  const card = () => dash.evaluate((viewer) => {
    const c = document.querySelector(`.card[data-key="${viewer}"]`);
    if (!c) return null;
    const stats = {};
    for (const d of c.querySelectorAll(".stats div")) {
      stats[d.querySelector("span").textContent] = d.querySelector("b").textContent;
    }
    const ad = c.querySelector(".ad");
    return {
      status: c.querySelector(".status").textContent.replace(" ", "_"),
      title: c.querySelector(".title").textContent,
      client: c.querySelector(".client").textContent,
      ad: ad ? ad.textContent : null,
      stats,
      seen: window.e2eSeen,
    };
  }, viewer);
  let last = null;
  async function until(pred, what, ms = 30000) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const c = await card();
      if (c) last = c;
      if (c && pred(c)) return c;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`timed out waiting for the dashboard to show ${what}; last shown ${JSON.stringify(last)}`);
  }
  const times = (c, s) => c.seen.filter((x) => x === s).length;

  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("demo page error:", e.message));
  await page.goto(`${dashboard}/demo/?collector=${encodeURIComponent(collector)}&user=${viewer}&ads=4,9&adSeconds=3`);
  await page.waitForFunction(() => document.getElementById("video").readyState >= 1);
  await page.evaluate(() => document.getElementById("video").play());
  await until((c) => c.status === "watching", "watching");
  await page.waitForTimeout(1000);
  await page.evaluate(() => document.getElementById("video").pause());
  await until((c) => c.status === "paused", "paused");
  await page.evaluate(() => document.getElementById("video").play());
  await until((c) => c.status === "in_ad" && c.ad !== null, "the first ad break, with its ad");
  await page.waitForTimeout(2300);
  await page.evaluate(() => window.weirDemo.skipAd());
  await until((c) => c.status === "watching" && times(c, "in_ad") === 1, "watching after the ad");
  await until((c) => c.status === "in_ad" && times(c, "in_ad") === 2, "the second ad break");
  await until((c) => c.status === "watching" && times(c, "in_ad") === 2, "watching after the second ad");
  await page.evaluate(() => { const v = document.getElementById("video"); v.currentTime = v.duration - 1.5; });
  const end = await until((c) => c.status === "ended", "ended", 20000);
  const text = await dash.textContent("main");
  await dash.screenshot({ path: screenshot });
  console.log(JSON.stringify({ seen: end.seen, card: end, dashboardText: text }));
} finally {
  await browser.close();
}
