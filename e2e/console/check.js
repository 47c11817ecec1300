// Drives the inference console (services/inference/src/http/console.html) in
// headless Chromium for e2e/tests/console.rs: the page shows the served
// model, a prediction through the form returns the class, and a promotion
// made meanwhile (the test makes it when this prints READY) appears live.
//
//   node check.js http://127.0.0.1:8080/console shot.png

'use strict';

const { run } = require('./browser');

const [url, shot] = process.argv.slice(2);

// Set when the service requires API keys: the page must ask for one.
const key = process.env.FERRY_API_KEY;

run({ width: 1200, height: 900 }, async (page) => {
  await page.goto(url);
  if (key) {
    await page.waitForSelector('#keyform:not([hidden])', { timeout: 15000 });
    console.log('ASKED');
    await page.fill('#key', key);
    await page.click('#keyform button');
  }
  await page.waitForSelector('tr[data-model="iris"] td.SERVING', { timeout: 15000 });
  console.log('SERVED ' + (await page.textContent('tr[data-model="iris"] td.version')));
  await page.fill('#input-input', '[[5.1, 3.5, 1.4, 0.2]]');
  await page.click('#predict');
  await page.waitForSelector('#result:has-text("served by")', { timeout: 15000 });
  console.log('RESULT ' + JSON.stringify(await page.textContent('#result')));
  console.log('READY');
  await page.waitForSelector('#events li:has-text("registry #")', { timeout: 30000 });
  console.log('REGISTRY ' + JSON.stringify(await page.textContent('#events li:has-text("registry #")')));
  await page.waitForSelector('#events li:has-text("now serves version 2")', { timeout: 30000 });
  await page.waitForSelector('tr[data-model="iris"] td.version:has-text("2")', { timeout: 10000 });
  console.log('EVENT ' + JSON.stringify(await page.textContent('#events li:has-text("now serves")')));
  await page.screenshot({ path: shot, fullPage: true });
});
