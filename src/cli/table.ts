// Plain-text tables for the CLI: columns padded to their widest cell, two spaces
// apart, the last column left as it is (no trailing blanks).
export function formatTable(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return rows.map(line).join('\n') + '\n';
}
