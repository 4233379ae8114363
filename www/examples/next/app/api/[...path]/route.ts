import { rs } from "../../../lib/runstream";

// Every PROTOCOL route (streams, snapshots, sends, cancels, the publish API)
// under /api/, answered by the kit's fetch router (404 outside its routes).
export const GET = rs.fetch;
export const POST = rs.fetch;
// Streams are per request and long-lived: never prerendered or cached, on Node (not the edge).
export const dynamic = "force-dynamic";
export const runtime = "nodejs";
