import CPosix
import LeaseProtocol
#if canImport(Glibc)
import Glibc
#endif

// MARK: bytes

extension UsageIndex {
    /// FNV-1a, 64 bits: the checksums and the journal fingerprint.
    static func hash(_ bytes: UnsafeRawBufferPointer, into value: inout UInt64) {
        for byte in bytes {
            value ^= UInt64(byte)
            value = value &* 0x100_0000_01B3
        }
    }

    static func hash(_ bytes: [UInt8]) -> UInt64 {
        var value: UInt64 = 0xCBF2_9CE4_8422_2325
        bytes.withUnsafeBytes { hash($0, into: &value) }
        return value
    }

    struct Writer {
        var bytes: [UInt8] = []

        mutating func varint(_ value: UInt64) {
            var value = value
            while value >= 0x80 {
                bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
                value >>= 7
            }
            bytes.append(UInt8(value))
        }

        mutating func count(_ value: Int) { varint(UInt64(max(0, value))) }
        mutating func signed(_ value: Int64) { varint(UInt64(bitPattern: (value << 1) ^ (value >> 63))) }

        mutating func fixed(_ value: UInt64) {
            for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
        }

        mutating func string(_ text: String) {
            let utf8 = Array(text.utf8)
            count(utf8.count)
            bytes += utf8
        }

        mutating func names(_ ids: [Int]) {
            count(ids.count)
            for id in ids { count(id) }
        }
    }

    struct Corrupt: Error {}

    /// Reads what `Writer` wrote; every count and index is checked against what is left and
    /// against the name table, so corrupt bytes end in `Corrupt`, never in a trap or a huge
    /// allocation.
    struct Reader {
        let bytes: [UInt8]
        var index = 0
        /// Names an index may refer to.
        var nameCount = 0

        init(_ bytes: [UInt8], nameCount: Int = 0) {
            self.bytes = bytes
            self.nameCount = nameCount
        }

        var atEnd: Bool { index == bytes.count }

        mutating func varint() throws(Corrupt) -> UInt64 {
            var value: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                guard index < bytes.count, shift < 64 else { throw Corrupt() }
                let byte = bytes[index]
                index += 1
                value |= UInt64(byte & 0x7F) << shift
                if byte < 0x80 { return value }
                shift += 7
            }
        }

        /// A count of things each at least `size` bytes long.
        mutating func count(of size: Int = 1) throws(Corrupt) -> Int {
            let value = try varint()
            guard value <= UInt64((bytes.count - index) / max(1, size)) else { throw Corrupt() }
            return Int(value)
        }

        /// A count of something else (leases, samples), at most a bucket's lines.
        mutating func number() throws(Corrupt) -> Int {
            let value = try varint()
            guard value <= UInt64(UsageIndex.maxLines) else { throw Corrupt() }
            return Int(value)
        }

        mutating func offset() throws(Corrupt) -> Int64 {
            let value = try varint()
            guard value <= UInt64(Int64.max) else { throw Corrupt() }
            return Int64(value)
        }

        mutating func signed() throws(Corrupt) -> Int64 {
            let value = try varint()
            return Int64(bitPattern: value >> 1) ^ -Int64(bitPattern: value & 1)
        }

        mutating func fixed() throws(Corrupt) -> UInt64 {
            guard bytes.count - index >= 8 else { throw Corrupt() }
            var value: UInt64 = 0
            for shift in 0..<8 { value |= UInt64(bytes[index + shift]) << UInt64(shift * 8) }
            index += 8
            return value
        }

        mutating func string() throws(Corrupt) -> String {
            let length = try count()
            defer { index += length }
            return String(decoding: bytes[index..<(index + length)], as: UTF8.self)
        }

        mutating func name() throws(Corrupt) -> Int {
            let value = try varint()
            guard value < UInt64(nameCount) else { throw Corrupt() }
            return Int(value)
        }

        mutating func names() throws(Corrupt) -> [Int] {
            let count = try count()
            var ids: [Int] = []
            ids.reserveCapacity(count)
            for _ in 0..<count { ids.append(try name()) }
            return ids
        }
    }
}

// MARK: a bucket's bytes

extension UsageIndex.Bucket {
    /// Times are written relative to `base` (the bucket's earliest), so they are short.
    func encoded(base: Int64) -> [UInt8] {
        var out = UsageIndex.Writer()
        func list(_ range: Range<Int>) { out.names(Array(lists[range])) }
        if let lastTime {
            out.count(1)
            out.signed(lastTime - base)
        } else {
            out.count(0)
        }
        out.count(learned.count)
        for learned in learned { out.count(learned.name); out.count(learned.type) }
        out.names(untyped)
        out.count(grants.count)
        for grant in grants {
            list(grant.resources)
            out.count(grant.count)
            let samples = waits[grant.waits]
            let zeros = samples.prefix { $0.bitPattern == 0 }.count
            out.count(zeros)
            out.count(samples.count - zeros)
            for wait in samples.dropFirst(zeros) { out.fixed(wait.bitPattern) }
        }
        for counts in [abnormal, failedResets] {
            out.count(counts.count)
            for counted in counts { list(counted.resources); out.count(counted.count) }
        }
        out.count(held.count)
        for held in held { out.count(held.name); out.signed(held.milliseconds) }
        out.count(ends.count)
        for end in ends {
            out.varint(end.lease)
            out.signed(end.at - base)
            out.signed(end.heldMilliseconds)
            list(end.resources)
        }
        out.count(closed.count)
        for lease in closed { out.varint(lease) }
        out.count(open.count)
        for lease in open {
            out.varint(lease.lease)
            out.signed(lease.at - base)
            list(lease.resources)
        }
        return out.bytes
    }

    init(decoding bytes: [UInt8], base: Int64, nameCount: Int) throws(UsageIndex.Corrupt) {
        var input = UsageIndex.Reader(bytes, nameCount: nameCount)
        self.init()
        func time() throws(UsageIndex.Corrupt) -> Int64 {
            let (sum, overflow) = base.addingReportingOverflow(try input.signed())
            guard !overflow else { throw UsageIndex.Corrupt() }
            return sum
        }
        func list() throws(UsageIndex.Corrupt) -> Range<Int> {
            let count = try input.count()
            let start = lists.count
            for _ in 0..<count { lists.append(try input.name()) }
            return start..<lists.count
        }
        if try input.count() == 1 { lastTime = try time() }
        for _ in 0..<(try input.count(of: 2)) { learned.append(Learned(name: try input.name(), type: try input.name())) }
        untyped = try input.names()
        for _ in 0..<(try input.count(of: 4)) {
            let resources = try list()
            let count = try input.number()
            let zeros = try input.number()
            guard waits.count + zeros <= UsageIndex.maxLines else { throw UsageIndex.Corrupt() }
            let start = waits.count
            waits += repeatElement(0, count: zeros)
            for _ in 0..<(try input.count(of: 8)) { waits.append(Double(bitPattern: try input.fixed())) }
            grants.append(Grants(resources: resources, count: count, waits: start..<waits.count))
        }
        for _ in 0..<(try input.count(of: 2)) { abnormal.append(Count(resources: try list(), count: try input.number())) }
        for _ in 0..<(try input.count(of: 2)) { failedResets.append(Count(resources: try list(), count: try input.number())) }
        for _ in 0..<(try input.count(of: 2)) { held.append(Held(name: try input.name(), milliseconds: try input.signed())) }
        for _ in 0..<(try input.count(of: 4)) {
            ends.append(End(lease: try input.varint(), at: try time(), heldMilliseconds: try input.signed(), resources: try list()))
        }
        for _ in 0..<(try input.count()) { closed.append(try input.varint()) }
        for _ in 0..<(try input.count(of: 3)) {
            open.append(Open(lease: try input.varint(), at: try time(), resources: try list()))
        }
        guard input.atEnd else { throw UsageIndex.Corrupt() }
    }
}

// MARK: files

extension UsageIndex {
    /// A bucket ends after this many lines (or bytes), whatever their times: what building one
    /// holds in memory, and what a summary's counts can be, are bounded.
    static let maxLines = 1 << 20
    static let maxBucketBytes: Int64 = 64 << 20

    /// One journal file's index, open for a query.
    final class FileIndex {
        let names: [String]
        let entries: [Entry]
        let covered: Int64
        private let fd: Int32
        private let dataStart: Int64
        private let discard: () -> Void

        init(names: [String], entries: [Entry], covered: Int64, fd: Int32, dataStart: Int64, discard: @escaping () -> Void) {
            self.names = names
            self.entries = entries
            self.covered = covered
            self.fd = fd
            self.dataStart = dataStart
            self.discard = discard
        }

        deinit { close(fd) }

        /// A bucket's summary; nil when its bytes are corrupt (the index file is then removed,
        /// to be rebuilt, and the caller reads the bucket's lines).
        func bucket(_ entry: Entry) -> Bucket? {
            var bytes = [UInt8](repeating: 0, count: entry.dataLength)
            guard UsageIndex.read(fd, at: dataStart + entry.dataOffset, into: &bytes), UsageIndex.hash(bytes) == entry.checksum,
                  let bucket = try? Bucket(decoding: bytes, base: entry.times?.lowerBound ?? 0, nameCount: names.count) else {
                discard()
                return nil
            }
            return bucket
        }

        /// All the buckets' bytes (to keep them when the index is extended).
        func data() -> [UInt8]? {
            let length = entries.last.map { Int($0.dataOffset) + $0.dataLength } ?? 0
            var bytes = [UInt8](repeating: 0, count: length)
            guard UsageIndex.read(fd, at: dataStart, into: &bytes) else { return nil }
            for entry in entries {
                let slice = bytes[Int(entry.dataOffset)..<(Int(entry.dataOffset) + entry.dataLength)]
                guard UsageIndex.hash(Array(slice)) == entry.checksum else { return nil }
            }
            return bytes
        }
    }

    /// Fills `buffer` from `offset`; false on an error or a short file.
    static func read(_ fd: Int32, at offset: Int64, into buffer: inout [UInt8]) -> Bool {
        var done = 0
        while done < buffer.count {
            let got = buffer.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return pread(fd, base + done, raw.count - done, off_t(offset) + off_t(done))
            }
            if got < 0, errno == EINTR { continue }
            guard got > 0 else { return false }
            done += got
        }
        return true
    }

    /// The indexes of one journal's files, in a directory of their own.
    final class Store: Sendable {
        let directory: String
        /// A bucket's hour (milliseconds); an index built with another span is rebuilt.
        let span: Int64

        init(directory: String, span: Int64 = 3_600_000) {
            self.directory = directory
            self.span = max(1, span)
        }

        func path(_ inode: UInt64) -> String { "\(directory)/\(inode).usage" }

        func discard(_ inode: UInt64) { _ = unlink(path(inode)) }

        /// What identifies the first `covered` bytes of a journal file: its first and last 4 KiB
        /// and the length (the journal only ever appends to a file, or cuts a torn line off its end).
        func fingerprint(_ file: JournalFile, covered: Int64, reader: borrowing JournalReader) -> UInt64? {
            var value: UInt64 = 0xCBF2_9CE4_8422_2325
            var buffer: [UInt8] = []
            let head = Int(min(4096, covered))
            let tailStart = max(0, covered - 4096)
            for (offset, count) in [(Int64(0), head), (tailStart, Int(covered - tailStart))] where count > 0 {
                guard reader.read(file, at: offset, count: count, into: &buffer) else { return nil }
                buffer.withUnsafeBytes { UsageIndex.hash(UnsafeRawBufferPointer(rebasing: $0[0..<count]), into: &value) }
            }
            withUnsafeBytes(of: covered.littleEndian) { UsageIndex.hash($0, into: &value) }
            return value
        }

        /// `file`'s index, if there is one that matches it (else nil: its lines are read).
        func load(_ file: JournalFile, reader: borrowing JournalReader) -> FileIndex? {
            let fd = open(path(file.inode), O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            guard let index = load(fd, file: file, reader: reader) else {
                close(fd)
                return nil
            }
            return index
        }

        private func load(_ fd: Int32, file: JournalFile, reader: borrowing JournalReader) -> FileIndex? {
            var start = [UInt8](repeating: 0, count: UsageIndex.headerSize)
            guard UsageIndex.read(fd, at: 0, into: &start), Array(start[0..<8]) == UsageIndex.magic else { return nil }
            var input = Reader(Array(start[8...]))
            guard let version = try? input.fixed(), version == UsageIndex.version,
                  let span = try? input.fixed(), span == UInt64(self.span),
                  let inode = try? input.fixed(), inode == file.inode,
                  let covered = try? input.fixed(), covered <= UInt64(file.size),
                  let fingerprint = try? input.fixed(),
                  let metaLength = try? input.fixed(), metaLength <= 256 << 20,
                  let metaChecksum = try? input.fixed(),
                  self.fingerprint(file, covered: Int64(covered), reader: reader) == fingerprint else { return nil }
            var meta = [UInt8](repeating: 0, count: Int(metaLength))
            guard UsageIndex.read(fd, at: Int64(UsageIndex.headerSize), into: &meta), UsageIndex.hash(meta) == metaChecksum,
                  let (names, entries) = try? Self.decodeMeta(meta), (entries.last?.end ?? 0) == Int64(covered) else { return nil }
            return FileIndex(names: names, entries: entries, covered: Int64(covered), fd: fd,
                             dataStart: Int64(UsageIndex.headerSize) + Int64(metaLength), discard: { [self] in discard(inode) })
        }

        static func encodeMeta(names: [String], entries: [Entry]) -> [UInt8] {
            var out = Writer()
            out.count(names.count)
            for name in names { out.string(name) }
            out.count(entries.count)
            for entry in entries {
                out.varint(UInt64(entry.start))
                out.varint(UInt64(entry.end - entry.start))
                out.count((entry.complex ? 1 : 0) | (entry.times == nil ? 0 : 2))
                if let times = entry.times {
                    out.signed(times.lowerBound)
                    out.signed(times.upperBound - times.lowerBound)
                }
                out.varint(UInt64(entry.dataOffset))
                out.count(entry.dataLength)
                out.fixed(entry.checksum)
            }
            return out.bytes
        }

        /// The name table and the buckets, which must be contiguous from the file's start.
        static func decodeMeta(_ bytes: [UInt8]) throws(Corrupt) -> ([String], [Entry]) {
            var input = Reader(bytes)
            var names: [String] = []
            for _ in 0..<(try input.count()) { names.append(try input.string()) }
            var entries: [Entry] = []
            var dataEnd: Int64 = 0
            for _ in 0..<(try input.count(of: 12)) {
                let start = try input.offset()
                let (end, overflow) = start.addingReportingOverflow(try input.offset())
                let flags = try input.varint()
                guard !overflow, end > start, start == (entries.last?.end ?? 0), flags < 4 else { throw Corrupt() }
                var times: ClosedRange<Int64>?
                if flags & 2 != 0 {
                    let low = try input.signed()
                    let (high, overflow) = low.addingReportingOverflow(try input.signed())
                    guard !overflow, high >= low else { throw Corrupt() }
                    times = low...high
                }
                let dataOffset = try input.offset()
                let dataLength = try input.offset()
                guard dataOffset == dataEnd, dataLength <= 1 << 30 else { throw Corrupt() }
                dataEnd += dataLength
                entries.append(Entry(start: start, end: end, times: times, complex: flags & 1 != 0,
                                     dataOffset: dataOffset, dataLength: Int(dataLength), checksum: try input.fixed()))
            }
            guard input.atEnd else { throw Corrupt() }
            return (names, entries)
        }

        /// Indexes what of `file` its index does not cover yet: a closed file to its end, the live
        /// one up to its last whole bucket (all of it once `now` is past that bucket's hour).
        /// False when the index could not be written (the directory is not writable: queries read
        /// the lines).
        /// `pause`: called between buckets (the server's builder waits there while queries run).
        @discardableResult
        func build(_ file: JournalFile, live: Bool, now: Int64?, reader: borrowing JournalReader, pause: () -> Void = {}) -> Bool {
            let length = reader.completeLength(file)
            var table = NameTable()
            var entries: [Entry] = []
            var data: [UInt8] = []
            var from: Int64 = 0
            if let existing = load(file, reader: reader), let bytes = existing.data() {
                guard existing.covered < length else { return true }
                from = existing.covered
                table = NameTable(existing.names)
                entries = existing.entries
                data = bytes
            }
            let known = entries.count
            func finish(_ builder: BucketBuilder, end: Int64) {
                let bucket = builder.bucket(&table)
                let bytes = bucket.encoded(base: builder.times?.lowerBound ?? 0)
                entries.append(Entry(start: builder.start, end: end, times: builder.times, complex: builder.complex,
                                     dataOffset: Int64(data.count), dataLength: bytes.count, checksum: UsageIndex.hash(bytes)))
                data += bytes
            }
            var builder: BucketBuilder?
            let span = self.span
            func hour(_ time: Int64) -> Int64 { time >= 0 ? time / span : (time - span + 1) / span }
            reader.forward(in: file, from: from, to: length) { line, offset in
                let time = JournalReader.lineTime(line)
                if let current = builder {
                    let later = time.map { time in current.hour.map { hour(time) > $0 } ?? false } ?? false
                    if later || current.lines >= UsageIndex.maxLines || offset - current.start >= UsageIndex.maxBucketBytes {
                        finish(current, end: offset)
                        builder = nil
                        pause()
                    }
                }
                var current = builder ?? BucketBuilder(start: offset)
                builder = nil
                if current.hour == nil, let time { current.hour = hour(time) }
                current.add(line, time: time)
                builder = current
                return true
            }
            if let last = builder {
                let over = now.map { now in last.hour.map { hour(now) > $0 } ?? false } ?? false
                if !live || over { finish(last, end: length) }
            }
            guard entries.count > known, let covered = entries.last?.end,
                  let fingerprint = fingerprint(file, covered: covered, reader: reader) else { return true }
            let meta = Self.encodeMeta(names: table.names, entries: entries)
            var out = Writer()
            out.bytes = UsageIndex.magic
            for value in [UsageIndex.version, UInt64(span), file.inode, UInt64(covered), fingerprint, UInt64(meta.count), UsageIndex.hash(meta)] {
                out.fixed(value)
            }
            return write(out.bytes + meta + data, to: path(file.inode))
        }

        /// Writes a file whole under a temporary name, then renames it into place.
        private func write(_ bytes: [UInt8], to path: String) -> Bool {
            let temporary = path + ".tmp"
            let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
            guard fd >= 0 else { return false }
            var done = 0
            var failed = false
            bytes.withUnsafeBytes { raw in
                while done < raw.count, let base = raw.baseAddress {
                    let written = Glibc.write(fd, base + done, raw.count - done)
                    if written < 0 {
                        if errno == EINTR { continue }
                        failed = true
                        return
                    }
                    done += written
                }
            }
            close(fd)
            guard !failed, rename(temporary, path) == 0 else {
                _ = unlink(temporary)
                return false
            }
            return true
        }

        /// Builds or extends the indexes of `reader.files` (newest first; the first is the live
        /// file, indexed once `minimumTail` bytes of it are not), and removes those of files that
        /// are gone.
        func refresh(reader: borrowing JournalReader, now: Int64?, minimumTail: Int64 = 1 << 20, pause: () -> Void = {}) {
            guard mkdir(directory, 0o750) == 0 || errno == EEXIST else { return }
            for (position, file) in reader.files.enumerated() {
                let length = reader.completeLength(file)
                let covered = load(file, reader: reader)?.covered
                if covered == length { continue }
                if position == 0, let covered, length - covered < minimumTail { continue }
                guard build(file, live: position == 0, now: now, reader: reader, pause: pause) else { return }
            }
            removeStale(keeping: Set(reader.files.map(\.inode)))
        }

        /// Removes the indexes (and leftover temporary files) of journal files that are gone.
        func removeStale(keeping inodes: Set<UInt64>) {
            guard let handle = opendir(directory) else { return }
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                guard let dot = name.firstIndex(of: "."), let inode = UInt64(name[..<dot]),
                      [".usage", ".usage.tmp"].contains(String(name[dot...])) else { continue }
                if !inodes.contains(inode) || name.hasSuffix(".tmp") { _ = unlink("\(directory)/\(name)") }
            }
        }
    }
}
