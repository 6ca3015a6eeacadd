// What both browser scripts share with the Rust test that drives them:
// lines from the test on stdin, "ok <what>" per passed check on stdout.

import { createInterface } from 'node:readline';

const stdinLines = createInterface({ input: process.stdin });
const pendingLines = [];
const lineWaiters = [];
stdinLines.on('line', (line) => {
  const waiter = lineWaiters.shift();
  if (waiter) waiter(line);
  else pendingLines.push(line);
});

/** The test's next line on stdin, or an error after `timeoutMs`. */
export function nextLine(timeoutMs) {
  if (pendingLines.length > 0) return Promise.resolve(pendingLines.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no answer from the test on stdin')), timeoutMs);
    lineWaiters.push((line) => {
      clearTimeout(timer);
      resolve(line);
    });
  });
}

/** Fails the run with `what` unless `condition` holds. */
export function check(condition, what) {
  if (!condition) throw new Error(what);
}

/** Reports a passed check. */
export function ok(what) {
  console.log(`ok ${what}`);
}

/** Stops reading stdin, so node can exit. */
export function closeInput() {
  stdinLines.close();
}
