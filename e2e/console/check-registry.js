// Drives the registry console (services/registry/src/console.html) in
// headless Chromium for e2e/tests/console.rs: the page lists the model with
// its aliases and recent moves, and a move made meanwhile (the test makes it
// when this prints READY) appears live and in the table.
//
//   node check-registry.js http://127.0.0.1:8081/console shot.png

'use strict';

const { run } = require('./browser');

const [url, shot] = process.argv.slice(2);

run({ width: 1300, height: 800 }, async (page) => {
  await page.goto(url);
  await page.waitForSelector('tr[data-model="iris"] td.aliases:has-text("@champion → 1")', { timeout: 15000 });
  console.log('LISTED ' + JSON.stringify(await page.textContent('tr[data-model="iris"]')));
  console.log('READY');
  await page.waitForSelector('#events li:has-text("iris@champion → 2")', { timeout: 30000 });
  console.log('EVENT ' + JSON.stringify(await page.textContent('#events li:has-text("iris@champion")')));
  await page.waitForSelector('tr[data-model="iris"]:has-text("better on the hold-out")', { timeout: 10000 });
  console.log('ROW ' + JSON.stringify(await page.textContent('tr[data-model="iris"]')));
  await page.screenshot({ path: shot, fullPage: true });
});
