// Headless Chromium for the browser tests' drivers (e2e.mjs, cards.mjs): $CHROMIUM, else
// `chromium` or `chromium-browser` on PATH (runtime/tests/setup.sh installs Debian's).
import { existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import { chromium } from "playwright-core";

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

/** Launches Chromium headless with the flags the tests need, plus `extra`. */
export function launch(extra = []) {
  return chromium.launch({
    executablePath: chromiumPath(),
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", ...extra],
  });
}
