// A real OpenID provider for meshscale's OIDC tests (npm oidc-provider, panva); started by
// tests/oidcprovider.py. Env OP_PORT (0 = free port), OP_REDIRECT_URIS (space-separated), OP_DEV_INTERACTIONS=1,
// OP_TAMPER: "nonce" (the provider signs ID tokens carrying a nonce other than the one the client sent) or
// "id_token" (the token response's ID token has its sub changed after signing) for the refusal tests.
import http from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const USERS = {
  alice: { password: 'alice-pw', email: 'alice@example.com', email_verified: true, name: 'Alice Admin', groups: ['admins', 'devs'] },
  bob: { password: 'bob-pw', email: 'bob@example.com', email_verified: true, name: 'Bob Builder', groups: ['devs'] },
  carol: { password: 'carol-pw', email: 'carol@example.org', email_verified: false, name: 'Carol', groups: [] },
};
const dev = process.env.OP_DEV_INTERACTIONS === '1';
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const form = (req) => new Promise((ok) => { let b = ''; req.on('data', (d) => { b += d; }); req.on('end', () => ok(new URLSearchParams(b))); });
let provider, handler;
const tamper = process.env.OP_TAMPER || '';
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
function misbehave(req, res) {
  if (tamper === 'nonce' && req.url.startsWith('/auth?')) { // sign what another login asked for
    const u = new URL(req.url, 'http://x');
    if (u.searchParams.has('nonce')) { u.searchParams.set('nonce', 'a-nonce-the-client-never-sent'); req.url = u.pathname + u.search; }
  }
  if (tamper === 'id_token' && req.method === 'POST' && req.url === '/token') { // alter the signed token
    const end = res.end.bind(res);
    res.end = (chunk, ...rest) => {
      const body = JSON.parse(String(chunk));
      if (body.id_token) {
        const [head, payload, sig] = body.id_token.split('.');
        const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
        body.id_token = [head, b64({ ...claims, sub: 'bob', email: 'bob@example.com' }), sig].join('.');
      }
      const out = JSON.stringify(body);
      if (!res.headersSent) res.setHeader('content-length', Buffer.byteLength(out));
      return end(out, ...rest.filter((r) => typeof r === 'function'));
    };
  }
}
const server = http.createServer(async (req, res) => {
  misbehave(req, res);
  if (dev || !/^\/interaction\/[\w-]+(\/login)?$/.test(req.url)) return handler(req, res);
  try { // minimal custom login; consent is skipped by loadExistingGrant below
    const { uid, params } = await provider.interactionDetails(req, res); // needs the _interaction cookie
    if (req.method === 'GET') {
      res.setHeader('content-type', 'text/html');
      return res.end(`<form method="post" action="/interaction/${esc(uid)}/login"><input name="login" value="${esc(params.login_hint || '')}"><input type="password" name="password"><button>Sign in</button></form>`);
    }
    const f = await form(req); const u = USERS[f.get('login')];
    if (!u || u.password !== f.get('password')) { res.statusCode = 401; return res.end('invalid credentials'); }
    await provider.interactionFinished(req, res, { login: { accountId: f.get('login') } }, { mergeWithLastSubmission: false }); // 303 /auth/<uid>
  } catch (e) { res.statusCode = 400; res.end(`${e.name}: ${e.message}`); }
});
server.listen(Number(process.env.OP_PORT || 0), '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  provider = new Provider(issuer, {
    clients: [{ client_id: 'meshscale', client_secret: 'meshscale-secret', grant_types: ['authorization_code', 'refresh_token'],
      redirect_uris: (process.env.OP_REDIRECT_URIS || 'http://127.0.0.1:8080/oidc/callback').split(' '), response_types: ['code'] }],
    jwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'test-rsa', use: 'sig', alg: 'RS256' }] },
    cookies: { keys: [randomBytes(16).toString('hex')] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
    conformIdTokenClaims: false, // scope claims in the ID token too, not only at userinfo
    pkce: { required: () => false }, // S256 accepted; `() => true` forces it
    features: { devInteractions: { enabled: dev } },
    async findAccount(ctx, id) {
      const u = USERS[id]; if (!u) return undefined;
      return { accountId: id, async claims() { const { password, ...c } = u; return { sub: id, ...c }; } };
    },
    async loadExistingGrant(ctx) { // first-party client: grant what is asked, no consent prompt
      if (dev) { const g = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId); return g && ctx.oidc.provider.Grant.find(g); }
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
      grant.addOIDCClaims(['sub', 'email', 'email_verified', 'name', 'groups']);
      await grant.save(); return grant;
    },
  });
  handler = provider.callback();
  console.log(`READY ${issuer}`); // the fixture waits for this line on stdout
});
process.on('SIGTERM', () => process.exit(0));
