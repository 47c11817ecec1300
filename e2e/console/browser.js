// What both console checks share: headless Chromium (Debian's, or $CHROMIUM)
// through playwright-core, one page, page errors failing the run, and a
// non-zero exit with the error on stderr.

'use strict';

const { chromium } = require('playwright-core');

async function withPage(viewport, check) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu'],
  });
  try {
    const page = await browser.newPage({ viewport });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await check(page);
    if (errors.length) throw new Error('page errors: ' + errors.join('; '));
    console.log('DONE');
  } finally {
    await browser.close();
  }
}

function run(viewport, check) {
  withPage(viewport, check).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}

module.exports = { run };
