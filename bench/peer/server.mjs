// The peer in the benchmark: @supabase/stripe-sync-engine behind node:http, as a Supabase
// user would run it. One cluster worker per gunicorn worker of ours, on its own database,
// migrated with its own migrations, with every option that calls Stripe's API off.
// Environment: DATABASE_URL, STRIPE_WEBHOOK_SECRET, PORT, WORKERS, POOL (connections per
// worker), MIGRATE=1 to apply its migrations and exit.
import cluster from 'node:cluster'
import http from 'node:http'
import { createRequire } from 'node:module'

// The package's CommonJS build: its ESM build's runMigrations needs __dirname.
const { StripeSync, runMigrations } = createRequire(import.meta.url)('@supabase/stripe-sync-engine')

const databaseUrl = process.env.DATABASE_URL
const workers = Number(process.env.WORKERS || 2)
const port = Number(process.env.PORT || 8100)

if (process.env.MIGRATE === '1') {
  await runMigrations({ databaseUrl, schema: 'stripe', logger: quietLogger() })
  process.exit(0)
}

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork()
  cluster.on('exit', () => process.exit(1))
} else {
  const sync = new StripeSync({
    poolConfig: { connectionString: databaseUrl, max: Number(process.env.POOL || 4) },
    stripeSecretKey: 'sk_test_bench_no_api_calls',
    stripeWebhookSecret: process.env.STRIPE_WEBHOOK_SECRET,
    backfillRelatedEntities: false,
    autoExpandLists: false,
    revalidateObjectsViaStripeApi: [],
  })
  http
    .createServer((req, res) => {
      if (req.method !== 'POST') {
        res.writeHead(req.url === '/healthz' ? 200 : 405).end()
        return
      }
      const chunks = []
      req.on('data', (chunk) => chunks.push(chunk))
      req.on('end', async () => {
        try {
          await sync.processWebhook(Buffer.concat(chunks), req.headers['stripe-signature'])
          res.writeHead(200, { 'content-type': 'application/json' }).end('{"received":true}')
        } catch (err) {
          const status = err?.type === 'StripeSignatureVerificationError' ? 400 : 500
          res.writeHead(status, { 'content-type': 'application/json' }).end(
            JSON.stringify({ error: String(err?.message || err) })
          )
        }
      })
    })
    .listen(port, '127.0.0.1')
}

function quietLogger() {
  const nothing = () => {}
  return { info: nothing, warn: nothing, error: console.error, debug: nothing, child: () => quietLogger() }
}
