// The outbound-TLS pages in headless Chromium, driven by playwright-core
// (tests/it/tls_dashboard.rs runs this):
//   node tls_dashboard.js BASE_URL SCREENSHOT_DIR USER_DATA_DIR
// with DAY, DOMAIN, ADMIN_NAME and ADMIN_PASSWORD in the environment.
// Asks for the day's JSON without a session, signs in, opens the day
// (screenshot) and the domain (screenshot, also in dark mode), fetches the
// day's JSON with the session, then the MTA-STS policies page (screenshot)
// and the domain's cached policy, and prints one JSON line with what it saw.
'use strict';

const { chromium, request } = require(process.env.PLAYWRIGHT_CORE);
const path = require('path');

async function main() {
  const [base, shots, userDataDir] = process.argv.slice(2);
  const day = process.env.DAY;
  const domain = process.env.DOMAIN;
  const result = { console: [] };

  const anonymous = await request.newContext();
  const refused = await anonymous.get(`${base}/admin/tls.json?day=${day}`, { maxRedirects: 0 });
  result.json_without_session = refused.status();
  await anonymous.dispose();

  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1100, height: 900 },
    timeout: 60000,
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(30000);
    page.on('console', (m) => result.console.push(m.text()));
    page.on('pageerror', (e) => result.console.push(String(e)));

    await page.goto(`${base}/admin/login`, { waitUntil: 'load' });
    await page.fill('input[name=name]', process.env.ADMIN_NAME);
    await page.fill('input[name=password]', process.env.ADMIN_PASSWORD);
    await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[type=submit]')]);
    result.after_login = await page.innerText('#where-to-look');

    await page.click('nav >> text=Outbound TLS');
    result.default_url = page.url();
    await page.goto(`${base}/admin/tls?day=${day}`, { waitUntil: 'load' });
    result.totals = {
      sessions: await page.innerText('#total-sessions'),
      successful: await page.innerText('#total-successful'),
      failed: await page.innerText('#total-failed'),
      domains: await page.innerText('#total-domains'),
    };
    result.rows = await page.$$eval('#domains tr', (trs) =>
      trs.slice(1).map((tr) => Array.from(tr.querySelectorAll('td')).map((td) => td.innerText)));
    await page.screenshot({ path: path.join(shots, 'tls-day.png'), fullPage: false });

    await page.click(`#domains >> text="${domain}"`);
    await page.waitForLoadState('load');
    result.domain_url = page.url();
    result.domain_text = await page.innerText('main');
    result.chart_bars = await page.locator('#chart rect.failed').count();
    result.chart_fill = await page.$eval('#chart rect.ok', (r) => getComputedStyle(r).fill);
    await page.screenshot({ path: path.join(shots, 'tls-domain.png'), fullPage: true });
    await page.emulateMedia({ colorScheme: 'dark' });
    result.chart_fill_dark = await page.$eval('#chart rect.ok', (r) => getComputedStyle(r).fill);
    await page.screenshot({ path: path.join(shots, 'tls-domain-dark.png'), fullPage: true });

    const answer = await page.request.get(`${base}/admin/tls.json?day=${day}`);
    result.json_status = answer.status();
    result.json = await answer.json();

    // The MTA-STS policies mailtls policyd cached, and the domain's own.
    await page.emulateMedia({ colorScheme: 'light' });
    await page.click('nav >> text=MTA-STS policies');
    await page.waitForLoadState('load');
    result.policies = await page.$$eval('#policies tr', (trs) =>
      trs.slice(1).map((tr) => Array.from(tr.querySelectorAll('td')).map((td) => td.innerText)));
    await page.screenshot({ path: path.join(shots, 'policies.png'), fullPage: true });
    await page.click(`#policies >> text="${domain}"`);
    await page.waitForLoadState('load');
    result.sts = {
      mode: await page.innerText('#sts-mode'),
      mx: await page.innerText('#sts-mx'),
      last_error: await page.innerText('#sts-last-error'),
    };
    const policies = await page.request.get(`${base}/admin/policies.json`);
    result.policies_json = await policies.json();
  } finally {
    await context.close();
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((e) => {
  process.stderr.write(`browser run failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
