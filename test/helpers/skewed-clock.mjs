// Preloaded into a child process (NODE_OPTIONS=--import <this file>) to run it on a clock that
// is HYPER_TEST_CLOCK_SKEW_MS off the machine's: Date.now() and new Date() are shifted; dates
// built from a value are not.
const skew = Number(globalThis.process.env.HYPER_TEST_CLOCK_SKEW_MS ?? 0);
if (skew !== 0) {
  const RealDate = globalThis.Date;
  const realNow = RealDate.now.bind(RealDate);
  class SkewedDate extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(realNow() + skew);
      else super(...args);
    }

    static now() {
      return realNow() + skew;
    }
  }
  globalThis.Date = SkewedDate;
}
