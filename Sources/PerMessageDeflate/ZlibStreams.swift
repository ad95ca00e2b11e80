// zlib raw deflate / inflate streams, each owned by a final class whose deinit frees it.
import CZlib
import WebSocketCodec

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 removes it from each
/// message and §7.2.2 appends it again before inflating.
let syncFlushTail: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

/// A raw deflate stream (no zlib header), allocated on first use.
public final class Deflater {
    public let windowBits: Int
    public let memoryLevel: Int
    public let level: Int
    private var stream: UnsafeMutablePointer<z_stream>?

    /// `windowBits` 8-15: zlib has no raw stream of 8 and makes it 9, whose longest distance
    /// (512 - 262 = 250 bytes) still fits a 256-byte window at the other end.
    public init(windowBits: Int, memoryLevel: Int, level: Int) {
        self.windowBits = Deflater.windowBits(windowBits)
        self.memoryLevel = min(9, max(1, memoryLevel))
        self.level = min(9, max(1, level))
    }

    /// The window zlib compresses with when asked for `requested` bits.
    public static func windowBits(_ requested: Int) -> Int { min(15, max(9, requested)) }

    deinit { release() }

    /// Whether zlib memory is held now.
    public var isAllocated: Bool { stream != nil }

    /// Frees the stream; the next message starts a new one (the peer's inflater can always
    /// take a message that refers to nothing before it).
    public func release() {
        guard let stream else { return }
        deflateEnd(stream)
        stream.deallocate()
        self.stream = nil
    }

    private func open() -> UnsafeMutablePointer<z_stream>? {
        if let stream { return stream }
        let created = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        created.initialize(to: z_stream())
        guard czlib_deflate_init(created, Int32(level), -Int32(windowBits), Int32(memoryLevel)) == Z_OK else {
            created.deallocate()
            return nil
        }
        stream = created
        return created
    }

    /// One message compressed and sync-flushed, without the `00 00 ff ff` tail. nil when zlib
    /// could not allocate its stream (the caller sends the message uncompressed).
    public func compress(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        guard let stream = open() else { return nil }
        var output: [UInt8] = []
        var capacity = Int(deflateBound(stream, uLong(input.count))) + 16
        var failed = false
        // zlib's input pointer is not const; it never writes through it.
        let inputBase = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.pointee.next_in = inputBase
        stream.pointee.avail_in = uInt(input.count)
        while true {
            let start = output.count
            output.append(contentsOf: repeatElement(0, count: capacity))
            let status: Int32 = output.withUnsafeMutableBufferPointer { buffer in
                stream.pointee.next_out = buffer.baseAddress.map { $0 + start }
                stream.pointee.avail_out = uInt(capacity)
                return deflate(stream, Z_SYNC_FLUSH)
            }
            let unused = Int(stream.pointee.avail_out)
            output.removeLast(unused)
            if status != Z_OK && status != Z_BUF_ERROR { failed = true; break }
            // Done when all input is taken and the flush fitted (room was left over).
            if stream.pointee.avail_in == 0 && unused > 0 { break }
            capacity = max(capacity, 1024)
        }
        stream.pointee.next_in = nil
        stream.pointee.next_out = nil
        if failed {
            release()
            return nil
        }
        if output.count >= 4, Array(output.suffix(4)) == syncFlushTail {
            output.removeLast(4)
        }
        // Nothing to flush (an empty message after another): one empty stored block's first
        // byte, as RFC 7692 §7.2.3.6 shows, so the receiver's stream stays in step.
        if output.isEmpty { output = [0x00] }
        return output
    }
}

/// A raw inflate stream, allocated on first use, with a cap on what one message may inflate to.
public final class Inflater {
    public let windowBits: Int
    private var stream: UnsafeMutablePointer<z_stream>?
    /// The last message ended with a final block: the stream must restart for the next one.
    private var ended = false

    public init(windowBits: Int) {
        self.windowBits = min(15, max(8, windowBits))
    }

    deinit { release() }

    public var isAllocated: Bool { stream != nil }

    public func release() {
        guard let stream else { return }
        inflateEnd(stream)
        stream.deallocate()
        self.stream = nil
    }

    private func open() -> UnsafeMutablePointer<z_stream>? {
        if ended { release(); ended = false }
        if let stream { return stream }
        let created = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        created.initialize(to: z_stream())
        guard czlib_inflate_init(created, -Int32(windowBits)) == Z_OK else {
            created.deallocate()
            return nil
        }
        stream = created
        return created
    }

    /// Inflates one message (its payload as received, without the tail). Stops as soon as the
    /// output would pass `limit` bytes and throws 1009, having inflated at most `limit + 1`
    /// bytes: a small frame that would inflate to gigabytes costs no more than the cap.
    /// Throws 1007 on data that is not valid deflate, 1011 when zlib cannot allocate.
    public func decompress(_ payload: [UInt8], limit: Int) throws(WebSocketError) -> [UInt8] {
        guard let stream = open() else {
            throw WebSocketError(closeCode: WebSocketCloseCodes.internalError, reason: "out of memory for inflating")
        }
        var output: [UInt8] = []
        var status = Z_OK
        var inputDone = false
        // The payload, then the tail, each fed until taken.
        for part in [payload, syncFlushTail] where !inputDone {
            var data = part
            let fed = data.withUnsafeMutableBufferPointer { input -> WebSocketError? in
                stream.pointee.next_in = input.baseAddress
                stream.pointee.avail_in = uInt(input.count)
                defer { stream.pointee.next_in = nil }
                if input.isEmpty { return nil }
                while true {
                    let room = min(max(4096, input.count * 4), 256 * 1024, limit + 1 - output.count)
                    if room <= 0 {
                        return WebSocketError(closeCode: WebSocketCloseCodes.messageTooBig,
                                              reason: "message inflates past \(limit) bytes")
                    }
                    let start = output.count
                    output.append(contentsOf: repeatElement(0, count: room))
                    status = output.withUnsafeMutableBufferPointer { buffer in
                        stream.pointee.next_out = buffer.baseAddress.map { $0 + start }
                        stream.pointee.avail_out = uInt(room)
                        return inflate(stream, Z_SYNC_FLUSH)
                    }
                    stream.pointee.next_out = nil
                    output.removeLast(Int(stream.pointee.avail_out))
                    switch status {
                    case Z_OK:
                        // Input taken and room left over: nothing more is pending.
                        if stream.pointee.avail_in == 0 && stream.pointee.avail_out > 0 { return nil }
                        continue
                    case Z_STREAM_END:
                        // A final block: what follows in this message is ignored, and the
                        // next message starts a new stream.
                        ended = true
                        inputDone = true
                        return nil
                    case Z_BUF_ERROR where stream.pointee.avail_in == 0:
                        return nil
                    case Z_MEM_ERROR:
                        return WebSocketError(closeCode: WebSocketCloseCodes.internalError, reason: "out of memory for inflating")
                    default:
                        return WebSocketError(closeCode: WebSocketCloseCodes.invalidPayloadData,
                                              reason: "invalid compressed data")
                    }
                }
                return nil
            }
            if let fed {
                release()
                ended = false
                throw fed
            }
        }
        if output.count > limit {
            release()
            throw WebSocketError(closeCode: WebSocketCloseCodes.messageTooBig, reason: "message inflates past \(limit) bytes")
        }
        return output
    }
}
