import CPosix
#if canImport(Glibc)
import Glibc
#endif

/// Reads the audit journal's files (newest first, as `AuditJournal.openForReading` opens them)
/// in large chunks: backwards for history (newest first), forwards for usage. Only complete lines
/// are seen: a torn last line (a write in progress, or a crash) is skipped. With a needle, only
/// lines containing it are handed over, found with `memmem` over whole chunks, so a scan for a
/// rare resource costs little more than reading the file.
struct JournalReader: ~Copyable {
    /// Where a line starts: which file (by inode, stable across rotation) and the byte offset.
    struct Position: Equatable {
        var inode: UInt64
        var offset: Int64
    }

    let files: [JournalFile]
    /// Bytes read at a time (small in tests, to put line boundaries everywhere).
    let chunkSize: Int
    /// Lines longer than this are skipped (a lease of thousands of resources writes long lines).
    let maxLineBytes: Int

    init(files: [JournalFile], chunkSize: Int = 1 << 20, maxLineBytes: Int = 64 << 20) {
        self.files = files
        self.chunkSize = chunkSize
        self.maxLineBytes = maxLineBytes
    }

    deinit { for file in files { close(file.fd) } }

    /// The length of the file's complete lines (up to its last newline).
    func completeLength(_ file: JournalFile) -> Int64 {
        var end = file.size
        var buffer = [UInt8](repeating: 0, count: 4096)
        while end > 0 {
            let start = max(0, end - Int64(buffer.count))
            let count = Int(end - start)
            guard read(file, at: start, count: count, into: &buffer) else { return 0 }
            if let newline = buffer[0..<count].lastIndex(of: UInt8(ascii: "\n")) { return start + Int64(newline) + 1 }
            end = start
        }
        return 0
    }

    func read(_ file: JournalFile, at offset: Int64, count: Int, into buffer: inout [UInt8]) -> Bool {
        if buffer.count < count { buffer = [UInt8](repeating: 0, count: count) }
        var done = 0
        while done < count {
            let got = buffer.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return pread(file.fd, base + done, count - done, off_t(offset) + off_t(done))
            }
            if got < 0 { if errno == EINTR { continue }; return false }
            if got == 0 { return false }
            done += got
        }
        return true
    }

    /// Lines newest first, from just before `before` (or the newest line), each with its
    /// position, until `body` returns false. `stopBefore`: a cheap check of a chunk's first
    /// complete line; true ends the scan after that chunk (the lines older than a `since`).
    func backward(before: Position? = nil, needle: [UInt8]? = nil,
                  stopAfterChunk: (UnsafeRawBufferPointer) -> Bool = { _ in false },
                  _ body: (UnsafeRawBufferPointer, Position) -> Bool) {
        var fileIndex = 0
        if let before {
            guard let index = files.firstIndex(where: { $0.inode == before.inode }) else { return }
            fileIndex = index
        }
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        while fileIndex < files.count {
            let file = files[fileIndex]
            var end = completeLength(file)
            if let before, before.inode == file.inode { end = min(end, before.offset) }
            var chunk = chunkSize
            while end > 0 {
                let start = max(0, end - Int64(chunk))
                let count = Int(end - start)
                guard read(file, at: start, count: count, into: &buffer) else { return }
                // Lines that start in this chunk: after its first newline (or from 0 at the file's
                // start). The chunk's last byte ends the last line: a newline before it is needed.
                var first = 0
                if start > 0 {
                    guard let newline = buffer[0..<(count - 1)].firstIndex(of: UInt8(ascii: "\n")) else {
                        if chunk >= maxLineBytes {
                            // A line too long to hold: skip it whole, back to the newline before it.
                            var probe = start
                            var lineStart: Int64 = 0
                            while probe > 0 {
                                let from = max(0, probe - Int64(chunkSize))
                                let part = Int(probe - from)
                                guard read(file, at: from, count: part, into: &buffer) else { return }
                                if let newline = buffer[0..<part].lastIndex(of: UInt8(ascii: "\n")) {
                                    lineStart = from + Int64(newline) + 1
                                    break
                                }
                                probe = from
                            }
                            end = lineStart
                            chunk = chunkSize
                        } else {
                            chunk *= 4
                        }
                        continue
                    }
                    first = newline + 1
                }
                chunk = chunkSize
                var keepGoing = true
                let stop: Bool = buffer.withUnsafeBytes { raw in
                    let region = UnsafeRawBufferPointer(rebasing: raw[first..<count])
                    let lines = Self.lineStarts(in: region, needle: needle)
                    for lineStart in lines.reversed() {
                        let lineEnd = Self.lineEnd(in: region, from: lineStart)
                        let line = UnsafeRawBufferPointer(rebasing: region[lineStart..<lineEnd])
                        if !body(line, Position(inode: file.inode, offset: start + Int64(first + lineStart))) {
                            keepGoing = false
                            return true
                        }
                    }
                    let firstLine = UnsafeRawBufferPointer(rebasing: region[0..<Self.lineEnd(in: region, from: 0)])
                    return stopAfterChunk(firstLine)
                }
                if !keepGoing || stop { return }
                end = start + Int64(first)
            }
            fileIndex += 1
        }
    }

    /// Lines oldest first, from the first line at or after `from` (a time the lines start with,
    /// found by bisection), until `body` returns false.
    func forward(fromMilliseconds from: Int64?, _ body: (UnsafeRawBufferPointer) -> Bool) {
        // Oldest file first; skip files whose last line is older than `from`.
        for file in files.reversed() {
            let length = completeLength(file)
            var start: Int64 = 0
            if let from {
                if let last = lastLineTime(file, length: length), last < from { continue }
                start = bisect(file, length: length, for: from)
            }
            if !forward(in: file, from: start, to: length, { line, _ in body(line) }) { return }
        }
    }

    /// The lines of `file` between two line starts (`to`: a line start or the length of its
    /// complete lines), oldest first, each with its offset; false when `body` returned false (or
    /// a read failed).
    @discardableResult
    func forward(in file: JournalFile, from: Int64, to length: Int64, _ body: (UnsafeRawBufferPointer, Int64) -> Bool) -> Bool {
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        var start = from
        var chunk = chunkSize
        while start < length {
            let count = Int(min(Int64(chunk), length - start))
            guard read(file, at: start, count: count, into: &buffer) else { return false }
            guard let lastNewline = buffer[0..<count].lastIndex(of: UInt8(ascii: "\n")) else {
                if chunk >= maxLineBytes {
                    // Skip the over-long line: up to its newline.
                    var skip = start + Int64(count)
                    while skip < length {
                        let part = Int(min(Int64(chunkSize), length - skip))
                        guard read(file, at: skip, count: part, into: &buffer) else { return false }
                        if let newline = buffer[0..<part].firstIndex(of: UInt8(ascii: "\n")) { skip += Int64(newline) + 1; break }
                        skip += Int64(part)
                    }
                    start = skip
                    chunk = chunkSize
                } else {
                    chunk *= 4
                }
                continue
            }
            chunk = chunkSize
            let keepGoing: Bool = buffer.withUnsafeBytes { raw in
                var lineStart = 0
                let region = UnsafeRawBufferPointer(rebasing: raw[0...lastNewline])
                while lineStart <= lastNewline {
                    let lineEnd = Self.lineEnd(in: region, from: lineStart)
                    if !body(UnsafeRawBufferPointer(rebasing: raw[lineStart..<lineEnd]), start + Int64(lineStart)) { return false }
                    lineStart = lineEnd + 1
                }
                return true
            }
            if !keepGoing { return false }
            start += Int64(lastNewline + 1)
        }
        return true
    }

    func lastLineTime(_ file: JournalFile, length: Int64) -> Int64? {
        guard length > 0 else { return nil }
        let start = max(0, length - 4096)
        var buffer = [UInt8]()
        guard read(file, at: start, count: Int(length - start), into: &buffer) else { return nil }
        let body = buffer[0..<Int(length - start - 1)]
        let lineStart = body.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0
        return buffer[lineStart...].withUnsafeBytes { Self.lineTime($0) }
    }

    /// The offset of a line at or a little before the first line with a time ≥ `target` (lines
    /// are in time order but for a few milliseconds between writers: the search aims a few
    /// seconds early and the caller skips what is older).
    func bisect(_ file: JournalFile, length: Int64, for target: Int64) -> Int64 {
        let aim = target - 5_000
        var low: Int64 = 0      // a line start known to be before `aim` (or the file's start)
        var high = length       // a position known to be at or after `aim`
        var buffer = [UInt8](repeating: 0, count: 8192)
        while high - low > 64 * 1024 {
            let middle = low + (high - low) / 2
            let count = Int(min(Int64(buffer.count), length - middle))
            guard count > 0, read(file, at: middle, count: count, into: &buffer),
                  let newline = buffer[0..<count].firstIndex(of: UInt8(ascii: "\n")) else { break }
            let lineStart = middle + Int64(newline) + 1
            guard lineStart < length else { high = middle; continue }
            let time: Int64? = buffer[(newline + 1)..<count].withUnsafeBytes { Self.lineTime($0) }
            guard let time else { break }
            if time < aim { low = lineStart } else { high = middle }
        }
        return low
    }

    /// Starts of the lines in `region` (which ends with a newline or is whole lines), only of
    /// those containing `needle` when one is given.
    static func lineStarts(in region: UnsafeRawBufferPointer, needle: [UInt8]?) -> [Int] {
        var starts: [Int] = []
        guard let base = region.baseAddress, region.count > 0 else { return starts }
        guard let needle, !needle.isEmpty else {
            var start = 0
            while start < region.count {
                starts.append(start)
                start = lineEnd(in: region, from: start) + 1
            }
            return starts
        }
        var searchFrom = 0
        while searchFrom < region.count {
            let found = needle.withUnsafeBytes { leasehold_memmem(base + searchFrom, region.count - searchFrom, $0.baseAddress, needle.count) }
            guard let found else { break }
            let hit = base.distance(to: UnsafeRawPointer(found))
            // The start of the line around the hit.
            var start = hit
            if let previous = leasehold_memrchr(base, 0x0A, hit) {
                start = base.distance(to: UnsafeRawPointer(previous)) + 1
            } else {
                start = 0
            }
            starts.append(start)
            searchFrom = lineEnd(in: region, from: hit) + 1
        }
        return starts
    }

    /// The index of the newline that ends the line starting at `start` (or the region's end).
    static func lineEnd(in region: UnsafeRawBufferPointer, from start: Int) -> Int {
        guard let base = region.baseAddress, start < region.count else { return region.count }
        guard let newline = memchr(base + start, 0x0A, region.count - start) else { return region.count }
        return base.distance(to: UnsafeRawPointer(newline))
    }

    /// The time a journal line starts with (`{"time":"2026-12-07T15:31:52.250Z",…`), in Unix
    /// milliseconds, without parsing the rest.
    static func lineTime(_ line: UnsafeRawBufferPointer) -> Int64? {
        let prefix: StaticString = #"{"time":""#
        let length = prefix.utf8CodeUnitCount
        guard line.count > length + 20,
              line.prefix(length).elementsEqual(UnsafeRawBufferPointer(start: prefix.utf8Start, count: length)) else { return nil }
        let rest = UnsafeRawBufferPointer(rebasing: line[length...])
        guard let close = rest.prefix(40).firstIndex(of: UInt8(ascii: "\"")) else { return nil }
        return RFC3339.parse(bytes: UnsafeRawBufferPointer(rebasing: rest[0..<close]))
    }

    /// The event name that follows the time (`,"event":"granted"`), without parsing the rest.
    static func lineEvent(_ line: UnsafeRawBufferPointer) -> Substring? {
        let key = Array(#","event":""#.utf8)
        guard let base = line.baseAddress, line.count > 0,
              let found = key.withUnsafeBytes({ leasehold_memmem(base, min(line.count, 80), $0.baseAddress, key.count) }) else { return nil }
        let start = base.distance(to: UnsafeRawPointer(found)) + key.count
        guard start <= line.count, let close = line[start...].firstIndex(of: UInt8(ascii: "\"")) else { return nil }
        return Substring(String(decoding: UnsafeRawBufferPointer(rebasing: line[start..<close]), as: UTF8.self))
    }
}

/// RFC 3339 timestamps (`2026-12-07T15:31:52Z`, `…52.250+01:00`) ↔ Unix milliseconds.
enum RFC3339 {
    static func parse(_ text: String) -> Int64? {
        var text = text
        return text.withUTF8 { parse(bytes: UnsafeRawBufferPointer($0)) }
    }

    static func parse(bytes: UnsafeRawBufferPointer) -> Int64? {
        guard bytes.count >= 20, bytes.count <= 40 else { return nil }
        func number(_ from: Int, _ count: Int) -> Int64? {
            guard from + count <= bytes.count else { return nil }
            var value: Int64 = 0
            for byte in bytes[from..<(from + count)] {
                guard byte >= 0x30, byte <= 0x39 else { return nil }
                value = value * 10 + Int64(byte - 0x30)
            }
            return value
        }
        guard let year = number(0, 4), bytes[4] == UInt8(ascii: "-"), let month = number(5, 2), bytes[7] == UInt8(ascii: "-"),
              let day = number(8, 2), bytes[10] == UInt8(ascii: "T") || bytes[10] == UInt8(ascii: "t") || bytes[10] == UInt8(ascii: " "),
              let hour = number(11, 2), bytes[13] == UInt8(ascii: ":"), let minute = number(14, 2), bytes[16] == UInt8(ascii: ":"),
              let second = number(17, 2),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
        var index = 19
        var milliseconds: Int64 = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var digits = 0
            while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                if digits < 3 { milliseconds = milliseconds * 10 + Int64(bytes[index] - 0x30) }
                digits += 1
                index += 1
            }
            guard digits > 0 else { return nil }
            if digits < 3 { for _ in digits..<3 { milliseconds *= 10 } }
        }
        guard index < bytes.count else { return nil }
        var offsetMinutes: Int64 = 0
        switch bytes[index] {
        case UInt8(ascii: "Z"), UInt8(ascii: "z"):
            guard index + 1 == bytes.count else { return nil }
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            guard index + 6 == bytes.count, let hours = number(index + 1, 2), bytes[index + 3] == UInt8(ascii: ":"),
                  let minutes = number(index + 4, 2), hours < 24, minutes < 60 else { return nil }
            offsetMinutes = (hours * 60 + minutes) * (bytes[index] == UInt8(ascii: "+") ? 1 : -1)
        default:
            return nil
        }
        // Days from civil (proleptic Gregorian).
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetMinutes * 60
        return seconds * 1000 + milliseconds
    }

    /// `2026-12-07T15:31:52Z`, or with milliseconds when there are any.
    static func format(milliseconds: Int64) -> String {
        let whole = milliseconds >= 0 ? milliseconds / 1000 : (milliseconds - 999) / 1000
        let fraction = milliseconds - whole * 1000
        let text = ISO8601.format(unixSeconds: whole)
        guard fraction != 0 else { return text }
        return String(text.dropLast()) + "." + String(String(fraction + 1000).dropFirst()) + "Z"
    }
}
