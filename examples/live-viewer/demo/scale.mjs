// The dashboard at scale, for runtime/tests/dashboard_scale.rs: opens DASHBOARD_URL in headless
// Chromium over a store of many viewers and checks what a person would: the page loads (the time
// from navigation to the first cards is printed), it stays live (after printing `{"loaded": …}`
// the test writes an update for the viewer `live-check`, which must appear on page 1), the status
// filter shows only that status with its count, the next page shows other viewers, and the search
// finds one viewer. Prints one JSON line per step and saves a screenshot of the overview.
//
//   node scale.mjs DASHBOARD_URL SCREENSHOT.png SEARCH_ID
import { launch } from "./chromium.mjs";

const [dashboard, screenshot, searchId] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.on("pageerror", (e) => console.error("dashboard page error:", e.message));
  const keys = () => page.evaluate(() => [...document.querySelectorAll(".card")].map((c) => c.dataset.key));
  const t0 = Date.now();
  await page.goto(dashboard + "/");
  await page.waitForFunction(() => document.querySelectorAll(".card").length > 0
    && document.getElementById("total").textContent !== "0", null, { timeout: 60000 });
  const loadMs = Date.now() - t0;
  const total = await page.textContent("#total");
  console.log(JSON.stringify({ loaded: loadMs, total }));

  // Live: the update the test sends now shows on the first page.
  await page.waitForSelector('.card[data-key="live-check"]', { timeout: 30000 });
  const liveStatus = await page.textContent('.card[data-key="live-check"] .status');
  await page.screenshot({ path: screenshot });

  // Filter by status: every card has it; the count is the filtered total.
  await page.selectOption("#f-status", "paused");
  await page.waitForFunction(() => {
    const s = [...document.querySelectorAll(".card .status")];
    return s.length > 0 && s.every((x) => x.textContent === "paused");
  }, null, { timeout: 30000 });
  const pausedInfo = await page.textContent("#pageinfo");
  const page1 = await keys();
  await page.click("#next");
  await page.waitForFunction((first) => {
    const c = document.querySelector(".card");
    return c && c.dataset.key !== first && document.getElementById("pageinfo").textContent.startsWith("page 2 ");
  }, page1[0], { timeout: 30000 });
  const page2 = await keys();
  const page2Statuses = await page.evaluate(() => [...document.querySelectorAll(".card .status")].map((s) => s.textContent));

  // Search, any status.
  await page.selectOption("#f-status", "");
  await page.fill("#f-q", searchId);
  await page.waitForFunction((id) => {
    const c = [...document.querySelectorAll(".card")];
    return c.length === 1 && c[0].dataset.key === id;
  }, searchId, { timeout: 30000 });
  const searchInfo = await page.textContent("#pageinfo");
  console.log(JSON.stringify({ loadMs, total, liveStatus, pausedInfo, page1, page2, page2Statuses, searchInfo,
    url: page.url() }));
} finally {
  await browser.close();
}
