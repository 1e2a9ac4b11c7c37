/**
 * The chaos harness (test/helpers/chaos.ts) against Ceph RGW: the same seeded runs as
 * test/unit/format/volume/chaos.test.ts (a live writer, in some seeds logging to a WAL on RGW
 * too, concurrent snapshots, clones, restores, compactions, takeovers and kills, checked
 * against a reference model after every step), with the actors' requests going through the fault proxy (503s, 500s, connection
 * resets before and after the request was applied, truncated bodies) and through the
 * harness's own fault-injecting wrapper, while the checks read RGW directly. Timing is real
 * here, so a seed does not replay exactly; a failing seed's op log is printed all the same.
 * A seed lasts seconds here, not the minutes of virtual time: retention windows are drawn in
 * seconds, and most of the writer's own (online) compactions first write half of its last
 * stream again and keep only the newest checkpoint, so that they copy blocks beside its writes.
 *
 *   HYPER_CHAOS_SECONDS=n   time budget (default 30; at least one seed runs)
 *   HYPER_CHAOS_SEED=n, HYPER_CHAOS_FIRST_SEED, HYPER_CHAOS_KEEP_GOING, HYPER_CHAOS_EXCLUDE,
 *   HYPER_CHAOS_STEPS       as for the in-memory test (default 40 steps per seed here)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import {
  chaosEnv,
  describeFailure,
  runChaosBudget,
  type ChaosBackend,
} from '../../helpers/chaos.js';
import { needS3, type S3TestConfig } from '../../helpers/env.js';
import { s3FaultProxy } from '../../helpers/fault-proxy.js';
import { emptyStore, s3Options, uniqueS3Url } from '../../helpers/s3.js';

describe('chaos against Ceph RGW behind the fault proxy', () => {
  const faulty = s3FaultProxy(11);

  const backend = async (cfg: S3TestConfig, seed: number): Promise<ChaosBackend> => {
    const url = uniqueS3Url(cfg, `chaos-${seed}`);
    const actorRoot = await openStore(url, {
      ...s3Options(cfg, { endpoint: faulty().endpoint }),
      retry: { baseDelayMs: 5, maxDelayMs: 100 },
      maxAttempts: 3,
    });
    const checkRoot = await openStore(url, s3Options(cfg));
    const { proxy } = faulty();
    let rates = proxy.rates;
    return {
      actorRoot,
      checkRoot,
      virtualTime: false,
      // (A volume whose creation failed would end the run before it started: seed 8579 once.)
      pauseFaults: (paused) => {
        if (paused) [rates, proxy.rates] = [proxy.rates, {}];
        else proxy.rates = rates;
      },
      dispose: async () => {
        await emptyStore(checkRoot).catch(() => undefined);
        await actorRoot.close();
        await checkRoot.close();
      },
    };
  };

  it(
    'keeps every acknowledged write, snapshot and clone intact',
    { timeout: 30 * 60_000 },
    async (t) => {
      const cfg = needS3(t);
      if (!cfg) return;
      const { proxy } = faulty();
      proxy.rates = {
        slowDown: 0.01,
        internalError: 0.005,
        resetBefore: 0.005,
        resetAfter: 0.005,
        truncate: 0.003,
        slow: 0.02,
        latencyMs: 40,
      };
      const env = chaosEnv(30);
      const { totals, failures, seeds } = await runChaosBudget({
        ...env,
        steps: env.steps ?? 40,
        rates: { before: 0.003, after: 0.002 },
        makeBackend: (seed) => backend(cfg, seed),
        onResult: (r) => {
          if (r.violations.length > 0)
            console.log(
              describeFailure(r, `HYPER_CHAOS_SEED=${r.seed} (timing is real: it may not replay)`),
            );
        },
      });
      proxy.rates = {};
      console.log(
        `chaos (RGW) totals: seeds ${seeds.join(',')}, steps ${totals.steps}, operations ${totals.operations} (${totals.opsFailed} failed cleanly), requests ${totals.requests}, faults injected by the wrapper ${totals.faultsBefore + totals.faultsAfter} and by the proxy ${JSON.stringify(proxy.counts)} (${totals.storeErrors} requests failed at the store), takeovers ${totals.takeovers}, kills ${totals.kills}, NO_SPACE ${totals.noSpace}, WAL seeds ${totals.walSeeds} (${totals.walReplays} opens replayed one; ${totals.walDamages} records damaged, ${totals.walRefusals} operations refused for it, ${totals.walCuts} cuts by file repair), copies ${totals.copies} (${totals.copiesResumed} resumed, ${totals.copyTwins} beside a running twin), writers told FENCED ${totals.fencedWriters}, diffs applied ${totals.diffs} (${totals.diffRetries} run again after a failed import, ${totals.diffsResumed} finishing one cut short), online compactions ${totals.onlineCompactions} (${totals.onlineBlocksMoved} blocks moved), resizes ${totals.resizes} (${totals.resizesAcked} acknowledged, ${totals.resizesPending} left pending), invariant checks ${totals.checks}, violations ${totals.violations}`,
      );
      assert.ok(totals.checks > 0, 'no invariant was checked');
      assert.equal(
        failures.length,
        0,
        `violations in seed(s) ${failures.map((f) => f.seed).join(', ')}: ${failures
          .flatMap((f) => f.violations.slice(0, 3))
          .join(' | ')}`,
      );
    },
  );
});
