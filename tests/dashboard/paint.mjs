// First contentful paint of a page in Debian's chromium (used by bench/dashboard.sh):
// navigation start -> first paint, median of 10 fresh loads.
import { chromium } from "playwright-core";

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium", args: ["--no-sandbox"] });
for (const url of process.argv.slice(2)) {
const paints = [];
for (let i = 0; i < 11; i++) {
  const page = await browser.newPage();
  await page.goto(url, { waitUntil: "load" });
  const fcp = await page.evaluate(
    () =>
      new Promise((done) => {
        new PerformanceObserver((list) => {
          const e = list.getEntries().find((x) => x.name === "first-contentful-paint");
          if (e) done(e.startTime);
        }).observe({ type: "paint", buffered: true });
        setTimeout(() => done(NaN), 5000);
      }),
  );
  const nav = await page.evaluate(() => performance.getEntriesByType("navigation")[0].responseEnd);
  if (i > 0) paints.push([fcp, nav]);
  await page.close();
}
paints.sort((a, b) => a[0] - b[0]);
const mid = paints[Math.floor(paints.length / 2)];
console.log(`first contentful paint of ${url}: median ${mid[0].toFixed(1)} ms (response complete at ${mid[1].toFixed(1)} ms), max ${paints[paints.length - 1][0].toFixed(1)} ms over ${paints.length} loads`);
}
await browser.close();
