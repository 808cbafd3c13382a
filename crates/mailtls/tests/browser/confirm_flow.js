// The sender's confirmation flow in headless Chromium, driven by
// playwright-core (tests/posttls_browser.rs runs this):
//   node confirm_flow.js CONFIRM_URL SCREENSHOT_DIR USER_DATA_DIR
// Opens the link, takes a screenshot, presses the button, takes a
// screenshot of the page it lands on, and prints one JSON line with what
// the pages showed. Then, with ADMIN_NAME and ADMIN_PASSWORD set, signs in
// to the admin dashboard and takes a screenshot of it. Needs
// PLAYWRIGHT_CORE (the package's directory) and CHROMIUM (the browser
// binary) in the environment.
'use strict';

const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const path = require('path');

async function main() {
  const [url, shots, userDataDir] = process.argv.slice(2);
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1000, height: 900 },
    timeout: 60000,
  });
  const result = { console: [], requests: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(30000);
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') result.console.push(m.text());
    });
    page.on('pageerror', (e) => result.console.push(String(e)));
    page.on('request', (r) => result.requests.push(`${r.method()} ${new URL(r.url()).pathname.slice(0, 40)}`));

    const first = await page.goto(url, { waitUntil: 'load' });
    result.confirm_status = first.status();
    result.confirm_headers = first.headers();
    result.confirm_title = await page.title();
    result.confirm_text = await page.innerText('main');
    result.button = await page.innerText('button[type=submit]');
    result.stylesheet_applied = await page.evaluate(
      () => getComputedStyle(document.querySelector('header')).backgroundColor,
    );
    await page.screenshot({ path: path.join(shots, '1-confirm.png'), fullPage: true });

    const [response] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'load' }),
      page.click('button[type=submit]'),
    ]);
    result.after_status = response.status();
    result.after_url = page.url();
    result.after_text = await page.innerText('main');
    result.after_refresh = await page.evaluate(
      () => (document.querySelector('meta[http-equiv=refresh]') || {}).content || null,
    );
    result.forms_after = await page.locator('form').count();
    await page.screenshot({ path: path.join(shots, '2-requested.png'), fullPage: true });

    if (process.env.ADMIN_NAME) {
      await page.goto(new URL('/admin', url).href, { waitUntil: 'load' });
      result.login_url = page.url();
      await page.fill('input[name=name]', process.env.ADMIN_NAME);
      await page.fill('input[name=password]', process.env.ADMIN_PASSWORD);
      await Promise.all([
        page.waitForNavigation({ waitUntil: 'load' }),
        page.click('button[type=submit]'),
      ]);
      result.dashboard_url = page.url();
      result.dashboard_text = await page.innerText('main');
      result.session_cookie_visible_to_scripts = await page.evaluate(() => document.cookie);
      await page.screenshot({ path: path.join(shots, '3-dashboard.png'), fullPage: true });
    }
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(`browser flow failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
