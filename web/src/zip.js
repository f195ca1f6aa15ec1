// Reads the zip the Maxima front end answers with (OUTPUT and the plot
// files): the central directory, then each entry stored or deflated.

const u16 = (v, at) => v.getUint16(at, true);
const u32 = (v, at) => v.getUint32(at, true);

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function endOfDirectory(view) {
  for (let at = view.byteLength - 22; at >= Math.max(0, view.byteLength - 22 - 65535); at--) {
    if (u32(view, at) === 0x06054b50) return at;
  }
  throw new Error("not a zip: no end of central directory");
}

// Map of name -> Uint8Array.
export async function readZip(buffer) {
  const view = new DataView(buffer);
  const bytes = new Uint8Array(buffer);
  const end = endOfDirectory(view);
  const count = u16(view, end + 10);
  let at = u32(view, end + 16);
  const files = new Map();
  const names = new TextDecoder();
  for (let n = 0; n < count; n++) {
    if (u32(view, at) !== 0x02014b50) throw new Error("bad zip central directory");
    const method = u16(view, at + 10);
    const size = u32(view, at + 20);
    const nameLength = u16(view, at + 28);
    const skip = nameLength + u16(view, at + 30) + u16(view, at + 32);
    const local = u32(view, at + 42);
    const name = names.decode(bytes.subarray(at + 46, at + 46 + nameLength));
    const start = local + 30 + u16(view, local + 26) + u16(view, local + 28);
    const data = bytes.subarray(start, start + size);
    if (method === 0) files.set(name, data);
    else if (method === 8) files.set(name, await inflate(data));
    else throw new Error(`zip entry ${name}: method ${method} not supported`);
    at += 46 + skip;
  }
  return files;
}
