// Drives the session-sidecar demo (examples/demo.rs) in headless Chromium: visits,
// login, the counter, logout. Every step asserts what the page shows.
//
//   node check.mjs URL OUTDIR      # URL: the demo's address, e.g. http://127.0.0.1:8080/
//
// Normally run by ./run.sh, which starts the demo. Uses Debian's Chromium
// ($CHROMIUM, default /usr/bin/chromium) through playwright-core; no browser download.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { chromium, request as apiRequest } from "playwright-core";

const [url, outDir] = process.argv.slice(2);
if (!url || !outDir) {
  console.error("usage: node check.mjs URL OUTDIR");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  console.error(`browser check: no Chromium at ${executablePath}; install it: apt-get install -y chromium`);
  process.exit(1);
}

let step = "launch Chromium";
let page;
class CheckFailed extends Error {}
const expect = (what, want, got) => {
  if (want !== got) throw new CheckFailed(`${what}\n  expected: ${JSON.stringify(want)}\n  got:      ${JSON.stringify(got)}`);
};
const ok = (what, cond, got) => {
  if (!cond) throw new CheckFailed(`${what}\n  got: ${JSON.stringify(got)}`);
};

// What the demo's page shows, read from the DOM.
async function view() {
  const text = async (loc) => ((await loc.count()) ? (await loc.first().innerText()).trim() : null);
  return {
    title: await page.title(),
    heading: await text(page.locator("h1")),
    notice: await text(page.locator("p.notice")),
    visits: await text(page.locator("p", { hasText: "You have visited this page" }).locator("b")),
    user: await text(page.locator("p", { hasText: "Logged in as" }).locator("b")),
    loginForm: (await page.locator('form[action="/login"]').count()) === 1,
    logoutForm: (await page.locator('form[action="/logout"]').count()) === 1,
    status: await text(page.locator("small code").nth(1)),
  };
}

async function expectView(want) {
  const got = await view();
  for (const [k, v] of Object.entries(want)) expect(`page: ${k}`, v, got[k]);
  return got;
}

const sessionCookie = async (context) => {
  const cookies = (await context.cookies(url)).filter((c) => c.name === "session");
  return cookies.length ? cookies[0] : null;
};
const sessionId = async (context) => {
  const c = await sessionCookie(context);
  ok("a session cookie <id>.<mac>", c && /^[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}$/.test(c.value), c && c.value);
  return c.value.split(".")[0];
};

const profile = mkdtempSync(join(outDir, "chromium-profile-"));
let context;
let code = 0;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    chromiumSandbox: false,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 900, height: 640 },
  });
  context.setDefaultTimeout(15000);
  page = context.pages()[0] || (await context.newPage());
  console.log(`browser check: ${await page.evaluate(() => navigator.userAgent)} on ${url}`);

  step = "1. first visit: anonymous, visit 1, a login form";
  let resp = await page.goto(url);
  expect("HTTP status of /", 200, resp.status());
  await expectView({
    title: "session-sidecar demo",
    heading: "session-sidecar demo",
    notice: null,
    visits: "1",
    user: null,
    loginForm: true,
    logoutForm: false,
    status: "none",
  });
  const c0 = await sessionCookie(context);
  ok("the session cookie is HttpOnly, SameSite=Lax, host-only, a browser-session cookie",
    c0 && c0.httpOnly && c0.sameSite === "Lax" && c0.expires === -1 && !c0.domain.startsWith("."), c0);
  const id1 = await sessionId(context);

  step = "2. the counter: reload twice (visits 2, 3; status active)";
  await page.reload();
  await expectView({ visits: "2", status: "active", user: null });
  await page.reload();
  await expectView({ visits: "3", status: "active" });
  expect("session id while anonymous", id1, await sessionId(context));

  step = "3. an empty name is refused with a notice";
  await page.locator('input[name="user"]').fill("   ");
  await Promise.all([page.waitForURL(url), page.getByRole("button", { name: "Log in" }).click()]);
  await expectView({ notice: "Pick a name (1–64 characters).", loginForm: true, user: null, visits: "4" });

  step = "4. log in as Ann <b> (new session id, welcome notice, counter kept)";
  const name = "Ann <b>&";
  await page.locator('input[name="user"]').fill(name);
  await Promise.all([page.waitForURL(url), page.getByRole("button", { name: "Log in" }).click()]);
  await expectView({
    notice: `Welcome, ${name}!`,
    user: name, // shown as text: the app escapes it
    logoutForm: true,
    loginForm: false,
    visits: "5",
    status: "active",
  });
  ok("no element injected by the name", (await page.locator("p b b").count()) === 0, await page.content());
  const id2 = await sessionId(context);
  ok("the session id changes on login", id2 !== id1, { before: id1, after: id2 });
  const loggedInShot = join(outDir, "demo-logged-in.png");
  await page.screenshot({ path: loggedInShot, fullPage: true });

  step = "5. the notice shows once; the counter goes on, in a second tab too";
  await page.reload();
  await expectView({ notice: null, user: name, visits: "6" });
  const tab = await context.newPage();
  await tab.goto(url);
  const main = page;
  page = tab;
  await expectView({ notice: null, user: name, visits: "7" });
  await tab.close();
  page = main;
  await page.reload();
  await expectView({ user: name, visits: "8" });
  expect("session id after login stays", id2, await sessionId(context));
  const oldCookie = (await sessionCookie(context)).value;

  step = "6. log out (notice, login form back, counter restarts, new session id)";
  await Promise.all([page.waitForURL(url), page.getByRole("button", { name: "Log out" }).click()]);
  await expectView({
    notice: "You are logged out.",
    user: null,
    loginForm: true,
    logoutForm: false,
    visits: "1",
    status: "active",
  });
  const id3 = await sessionId(context);
  ok("the session id changes on logout", id3 !== id2, { before: id2, after: id3 });
  const loggedOutShot = join(outDir, "demo-logged-out.png");
  await page.screenshot({ path: loggedOutShot, fullPage: true });
  await page.reload();
  await expectView({ notice: null, visits: "2" });

  step = "7. the logged-out cookie, replayed, is expired";
  const api = await apiRequest.newContext();
  const replay = await api.get(url, { headers: { Cookie: `session=${oldCookie}` } });
  const html = await replay.text();
  await api.dispose();
  ok("replayed old cookie: status expired, anonymous", /status <code>expired<\/code>/.test(html) && !html.includes("Logged in as"), html);

  console.log(`browser check: all steps passed`);
  console.log(`screenshot (logged in):  ${loggedInShot}`);
  console.log(`screenshot (logged out): ${loggedOutShot}`);
} catch (err) {
  code = 1;
  console.error(`browser check FAILED at step: ${step}`);
  console.error(err instanceof CheckFailed ? err.message : err.stack || String(err));
  if (page) {
    const shot = join(outDir, "failure.png");
    try {
      await page.screenshot({ path: shot, fullPage: true });
      console.error(`screenshot of the failure: ${shot}`);
      console.error(`page URL: ${page.url()}\npage text:\n${(await page.locator("body").innerText()).slice(0, 2000)}`);
    } catch {}
  }
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
