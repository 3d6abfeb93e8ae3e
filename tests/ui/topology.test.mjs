// Browser test of tether-control's topology page, one phase per run:
//   node tests/ui/topology.test.mjs http://127.0.0.1:PORT healthy|broken|refused|scale
// Run by tests/tests/ui.rs, which starts the mesh (web → api ×2 → db, a
// refusing "audit" proxy) and changes it between phases; `scale` runs
// against 200 services with synthetic statistics. Drives the system
// Chromium (TETHER_CHROMIUM, default /usr/bin/chromium) with playwright-core;
// screenshots go to TETHER_UI_ARTIFACTS (default target/ui-artifacts).
// Exit 0: every check passed; 1: one failed (with the page's data).

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, phase] = process.argv.slice(2);
if (!base || !["healthy", "broken", "refused", "scale"].includes(phase)) {
  console.error("usage: node topology.test.mjs http://HOST:PORT healthy|broken|refused|scale");
  process.exit(2);
}
const executablePath = process.env.TETHER_CHROMIUM || "/usr/bin/chromium";
const artifacts = process.env.TETHER_UI_ARTIFACTS || "target/ui-artifacts";
mkdirSync(artifacts, { recursive: true });
/** How long a condition may take to show: a few stats intervals and polls. */
const WAIT_MS = 30_000;
/** The whole phase, whatever happens. */
const PHASE_MS = 90_000;

const phaseStart = Date.now();
let passed = 0;
/** What the condition being waited for saw last (set by conditions, printed when one fails). */
let detail = "";
const failures = [];

function check(condition, what) {
  if (condition) {
    passed += 1;
    console.log(`ok - ${what} [${Date.now() - phaseStart} ms]`);
  } else {
    failures.push(what);
    console.log(`not ok - ${what} [${Date.now() - phaseStart} ms]`);
  }
}

async function waitFor(what, condition, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  detail = "";
  let last;
  while (Date.now() < deadline) {
    try {
      last = await condition();
      if (last) {
        check(true, what);
        return last;
      }
    } catch (error) {
      last = error.message;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  check(false, `${what} (within ${timeout} ms; last: ${JSON.stringify(last)}${detail ? "; saw " + detail : ""})`);
  return null;
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // No connection leaves the machine: the page must work offline, and the
  // host's closed network refuses Chromium's own background traffic.
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
});
const timer = setTimeout(async () => {
  console.error(`phase ${phase} took more than ${PHASE_MS} ms`);
  process.exit(1);
}, PHASE_MS);

const page = await browser.newPage({ viewport: { width: 1400, height: 860 } });
const foreign = [];
const errors = [];
page.on("request", (r) => {
  if (!r.url().startsWith(base) && !r.url().startsWith("data:")) foreign.push(r.url());
});
page.on("pageerror", (e) => errors.push(e.message));
page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });

const attr = (selector, name) => page.locator(selector).first().getAttribute(name);
const count = (selector) => page.locator(selector).count();
const shot = (name, fullPage = false) => page.screenshot({ path: join(artifacts, `${name}.png`), fullPage });

try {
  await page.goto(`${base}/ui?window=20s`);
  await waitFor("the page polled the topology", async () => Number(await page.locator("body").getAttribute("data-polls")) >= 1);

  if (phase === "healthy") {
    for (const s of ["web", "api", "db", "audit"]) {
      await waitFor(`node ${s} is drawn`, async () => (await count(`g.node[data-service="${s}"]`)) === 1);
    }
    for (const e of ["web->api", "api->db"]) {
      await waitFor(`edge ${e} carries requests`, async () => Number(await attr(`path[data-edge="${e}"]`, "data-requests")) > 0);
    }
    const first = await attr('path[data-edge="web->api"]', "data-requests");
    await waitFor("the numbers move between polls", async () => {
      const now = await attr('path[data-edge="web->api"]', "data-requests");
      return now !== first && now;
    });
    const success = Number(await attr('path[data-edge="web->api"]', "data-success"));
    check(success >= 0.99, `web → api succeeds (${success})`);
    check((await page.locator('path[data-edge="web->api"]').getAttribute("class")).includes("ok"), "a healthy edge is drawn green");
    const rps = Number(await attr('g.node[data-service="api"]', "data-rps"));
    check(rps > 1 && rps < 200, `api's rate is plausible (${rps} req/s)`);
    const x = async (s) => (await page.locator(`g.node[data-service="${s}"]`).boundingBox()).x;
    check((await x("web")) < (await x("api")) && (await x("api")) < (await x("db")), "callers are left of callees (web, api, db)");
    check((await page.locator('g.node[data-service="api"]').textContent()).includes("/s"), "api's node shows its rate");

    await page.fill("#filter", "db");
    await waitFor("the filter keeps db and its caller, drops web", async () =>
      (await count('g.node[data-service="db"]')) === 1 && (await count('g.node[data-service="api"]')) === 1 && (await count('g.node[data-service="web"]')) === 0);
    await page.fill("#filter", "");
    await waitFor("clearing the filter brings web back", async () => (await count('g.node[data-service="web"]')) === 1);

    await page.click('g.node[data-service="api"]');
    await waitFor("api's two instances are listed", async () => (await count("#instances tr[data-instance]")) === 2);
    const instances = await page.locator("#instances tbody").textContent();
    check(instances.includes("api-1") && instances.includes("api-2"), "each instance names the proxy fronting it");
    check(/\d+\.\d+\.\d+/.test(instances), "instances show the proxy version");
    await shot("healthy-details");
    await page.click("#details .close");

    await page.click("#show-table");
    await waitFor("the table lists api", async () => (await count('#services-table tr[data-service="api"]')) === 1);
    check((await count('#edges-table tr[data-edge="api->db"]')) === 1, "the table lists the edge api → db");
    check((await count("#proxies-table tr[data-proxy]")) === 5, "the table lists the five proxies");
    await shot("healthy-table", true);
    await page.click("#show-graph");
    await waitFor("back to the graph", async () => (await count('g.node[data-service="web"]')) === 1);
    await shot("healthy");
  }

  if (phase === "broken") {
    // Checked together. Round-robin sends api-2 every other request: it
    // fails 20 in a row each time its ejection (3 s, 6 s, 9 s, ...) ends, so
    // the window always holds some.
    await waitFor("web → api's success rate drops under 99 %, drawn red, named in the problems panel", async () => {
      const s = await attr('path[data-edge="web->api"]', "data-success");
      const cls = (await page.locator('path[data-edge="web->api"]').getAttribute("class")) || "";
      const flagged = await attr('g.node[data-service="api"]', "data-problem");
      const listed = await count('#problem-list li[data-kind="low_success_rate"][data-service="api"]');
      const ok = s !== null && Number(s) < 0.99 && cls.includes("bad") && flagged === "true" && listed === 1;
      const status = await page.locator("#status").textContent();
      detail = `success ${s}, class ${cls}, flagged ${flagged}, listed ${listed}; ${status}`;
      return ok;
    });
    check((await attr('path[data-edge="api->db"]', "data-success")) === "1", "api → db is unaffected");
    await waitFor("the problems panel names the ejected instance", async () =>
      (await count('#problem-list li[data-kind="ejected_instance"][data-service="api"]')) === 1);
    await page.click('g.node[data-service="api"]');
    await waitFor("api's details show one ejected instance", async () => (await count('#instances tr[data-ejected="true"]')) === 1);
    const ejected = await page.locator('#instances tr[data-ejected="true"]').textContent();
    check(ejected.includes("api-2") && ejected.includes("ejected by"), `the ejected instance is api-2's (${ejected})`);
    await shot("broken");
    await page.click("#details .close");
  }

  if (phase === "refused") {
    await waitFor("the problems panel shows audit-1's refused config", async () =>
      (await count('#problem-list li[data-kind="refused_config"][data-subject="audit-1"]')) === 1);
    const text = await page.locator('#problem-list li[data-kind="refused_config"]').textContent();
    check(text.includes("trust_domain"), `the refusal says why (${text})`);
    check((await count('#problem-list li[data-kind="certificate_expiring"][data-subject="audit-1"]')) === 1,
      "audit-1's certificate (1 h left) is flagged");
    check((await attr('g.node[data-service="audit"]', "data-problem")) === "true", "audit is flagged in the graph");
    await shot("refused");
    // The picture for the README (docs/img/topology.png): header to graph.
    const bottom = await page.locator("#graph-scroll").evaluate((e) => e.getBoundingClientRect().bottom);
    await page.screenshot({ path: join(artifacts, "refused-readme.png"), clip: { x: 0, y: 0, width: 1400, height: Math.ceil(bottom) + 12 } });
    await page.click("#show-table");
    await waitFor("the proxies table marks audit-1", async () =>
      ((await page.locator('#proxies-table tr[data-proxy="audit-1"]').getAttribute("class")) || "").includes("bad"));
    await shot("refused-table", true);
  }

  if (phase === "scale") {
    await waitFor("200 services are drawn", async () => (await count("g.node[data-service]")) === 200);
    const boxes = await page.locator("g.node[data-service]").evaluateAll((nodes) =>
      nodes.map((n) => { const r = n.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }));
    let overlaps = 0;
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const [ax, ay, aw, ah] = boxes[i], [bx, by, bw, bh] = boxes[j];
        if (ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah) overlaps += 1;
      }
    }
    check(overlaps === 0, `no two services overlap (${overlaps} overlaps)`);
    const size = await page.locator("#graph").evaluate((g) => [g.getAttribute("width"), g.getAttribute("height")].map(Number));
    check(size[1] <= 2000, `the graph stays within ~2 screens tall (${size[0]}×${size[1]})`);
    check((await count("path.edge")) === 200, "every edge is drawn");
    check((await attr('g.node[data-service="svc-077"]', "data-problem")) === "true", "the failing back end is flagged");
    check((await count('#problem-list li[data-kind="low_success_rate"]')) >= 1, "its callers' edges are problems");
    await shot("scale");
    await page.fill("#filter", "svc-07");
    await waitFor("the filter narrows the graph to svc-07x and their neighbours", async () => {
      const n = await count("g.node[data-service]");
      return n >= 10 && n < 40 && (await count('g.node[data-service="svc-000"]')) === 0;
    });
    await page.click('g.node[data-service="svc-077"]');
    await waitFor("selecting a service shows its instance", async () => (await count("#instances tr[data-instance]")) === 1);
    await shot("scale-filtered");
    const started = Date.now();
    await page.fill("#filter", "");
    await waitFor("clearing the filter draws all 200 again", async () => (await count("g.node[data-service]")) === 200);
    check(Date.now() - started < 5_000, `redrawing 200 services is quick (${Date.now() - started} ms)`);
  }

  check(foreign.length === 0, `the page loads nothing from elsewhere (${foreign.join(", ")})`);
  check(errors.length === 0, `no script errors (${errors.join("; ")})`);
} catch (error) {
  check(false, `phase ${phase} threw: ${error.stack || error}`);
}

if (failures.length > 0) {
  await shot(`${phase}-failed`, true).catch(() => {});
  const data = await page.evaluate(async () => (await fetch("/v1/topology?window=20s")).text()).catch((e) => String(e));
  console.log(`topology at failure: ${data}`);
}
clearTimeout(timer);
await browser.close();
console.log(`${phase}: ${passed} passed, ${failures.length} failed`);
process.exit(failures.length > 0 ? 1 : 0);
