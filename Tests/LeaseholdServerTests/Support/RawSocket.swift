import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import LeaseProtocol

/// A blocking TCP socket to 127.0.0.1 for the cases the real client cannot produce: resets, a peer
/// that never answers pings, malformed frames, plain HTTP. Every read has a deadline.
final class RawSocket: @unchecked Sendable {
    private(set) var fd: Int32
    private var pending: [UInt8] = []

    init(port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard status == 0 else {
            let error = errno
            // deinit runs for a class whose throwing init had set every property: close once.
            close()
            throw TestFailure("connect to port \(port): errno \(error)")
        }
    }

    deinit { close() }

    func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count, fd >= 0 {
            let written = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
    }

    func write(_ text: String) { write(Array(text.utf8)) }

    /// Reads what is there (blocking up to `timeout`): bytes, [] at EOF or reset, nil on timeout.
    func readSome(timeout: Double) -> [UInt8]? {
        if !pending.isEmpty {
            defer { pending = [] }
            return pending
        }
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, Int32(timeout * 1000))
        if ready == 0 { return nil }
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count <= 0 { return [] }
        return Array(chunk[0..<count])
    }

    /// Exactly `count` bytes, or nil on EOF/timeout.
    func readExactly(_ count: Int, deadline: Date) -> [UInt8]? {
        var out: [UInt8] = []
        while out.count < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0, let chunk = readSome(timeout: left), !chunk.isEmpty else {
                pending = out + pending
                return nil
            }
            out += chunk
        }
        if out.count > count {
            pending = Array(out[count...])
            out = Array(out[..<count])
        }
        return out
    }

    /// Everything until the peer closes (or the deadline).
    func readToEOF(timeout: Double = liveness) -> [UInt8] {
        let deadline = Date().addingTimeInterval(timeout)
        var out: [UInt8] = []
        while deadline.timeIntervalSinceNow > 0 {
            guard let chunk = readSome(timeout: deadline.timeIntervalSinceNow), !chunk.isEmpty else { break }
            out += chunk
        }
        return out
    }

    /// Reads up to the end of an HTTP head; returns the head text, keeps the rest for later reads.
    func readHead(timeout: Double = liveness) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        var bytes: [UInt8] = []
        while deadline.timeIntervalSinceNow > 0 {
            if let end = Self.headEnd(bytes) {
                pending = Array(bytes[(end + 4)...])
                return String(decoding: bytes[..<end], as: UTF8.self)
            }
            guard let chunk = readSome(timeout: deadline.timeIntervalSinceNow), !chunk.isEmpty else { return nil }
            bytes += chunk
        }
        return nil
    }

    static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for index in 0...(bytes.count - 4) where bytes[index] == 13 && bytes[index + 1] == 10 && bytes[index + 2] == 13 && bytes[index + 3] == 10 {
            return index
        }
        return nil
    }

    /// Closes with SO_LINGER 0, so the peer sees a reset (RST).
    func reset() {
        guard fd >= 0 else { return }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }

    func close() {
        guard fd >= 0 else { return }
        Glibc.close(fd)
        fd = -1
    }
}

// MARK: HTTP

struct HTTPResult: Sendable, CustomStringConvertible {
    var status: Int
    var headers: [(String, String)]
    var body: String

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    var description: String { "HTTP \(status) \(body)" }
}

/// One HTTP/1.1 request with `Connection: close`.
func rawHTTP(port: UInt16, method: String, path: String, headers: [(String, String)] = [], body: String? = nil) async throws -> HTTPResult {
    let result: Result<HTTPResult, TestFailure> = await blocking {
        do {
            let socket = try RawSocket(port: port)
            defer { socket.close() }
            var request = "\(method) \(path) HTTP/1.1\r\n"
            if !headers.contains(where: { $0.0.lowercased() == "host" }) { request += "Host: 127.0.0.1:\(port)\r\n" }
            request += "Connection: close\r\n"
            for (name, value) in headers { request += "\(name): \(value)\r\n" }
            let bodyBytes = Array((body ?? "").utf8)
            if body != nil || method == "POST" {
                request += "Content-Length: \(bodyBytes.count)\r\n"
                if body != nil { request += "Content-Type: application/json\r\n" }
            }
            request += "\r\n"
            socket.write(Array(request.utf8) + bodyBytes)
            guard let head = socket.readHead() else { return .failure(TestFailure("no HTTP answer to \(method) \(path)")) }
            var lines = head.components(separatedBy: "\r\n")
            let statusLine = lines.removeFirst().split(separator: " ")
            guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return .failure(TestFailure("bad status line \(head)")) }
            var parsed: [(String, String)] = []
            for line in lines {
                guard let colon = line.firstIndex(of: ":") else { continue }
                parsed.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
            }
            var result = HTTPResult(status: status, headers: parsed, body: "")
            if let length = result.header("Content-Length").flatMap(Int.init) {
                let bytes = socket.readExactly(length, deadline: Date().addingTimeInterval(liveness)) ?? []
                result.body = String(decoding: bytes, as: UTF8.self)
            } else {
                result.body = String(decoding: socket.readToEOF(), as: UTF8.self)
            }
            return .success(result)
        } catch let error as TestFailure {
            return .failure(error)
        } catch {
            return .failure(TestFailure("\(error)"))
        }
    }
    return try result.get()
}

extension TestFailure: Equatable {
    static func == (a: TestFailure, b: TestFailure) -> Bool { a.description == b.description }
}

// MARK: raw WebSocket

/// A WebSocket spoken by hand: handshake, masked frames of any shape, server frames read back.
/// It never answers pings unless told to.
final class RawWebSocket: @unchecked Sendable {
    let socket: RawSocket

    struct Frame: Sendable {
        var opcode: UInt8
        var payload: [UInt8]
        var text: String { String(decoding: payload, as: UTF8.self) }
        var closeCode: UInt16? {
            guard opcode == 0x8, payload.count >= 2 else { return nil }
            return UInt16(payload[0]) << 8 | UInt16(payload[1])
        }
    }

    /// `firstText` goes out right after the 101, on the same thread: a test whose task is slow to
    /// be scheduled again must not look like a silent peer to a short dead-peer timeout.
    init(port: UInt16, path: String = "/v1/lease", firstText: String? = nil) async throws {
        socket = try RawSocket(port: port)
        let socket = socket
        let firstFrame = firstText.map { Self.frame(opcode: 0x1, payload: Array($0.utf8), fin: true, rsv: 0, masked: true) }
        let head: String? = await blocking {
            socket.write("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            let head = socket.readHead()
            if let firstFrame, head?.hasPrefix("HTTP/1.1 101") == true { socket.write(firstFrame) }
            return head
        }
        guard let head, head.hasPrefix("HTTP/1.1 101") else { throw TestFailure("no 101 from \(path): \(head ?? "nothing")") }
    }

    /// Sends one frame, masked as a client must (unless `masked` is false).
    func sendFrame(opcode: UInt8, payload: [UInt8], fin: Bool = true, rsv: UInt8 = 0, masked: Bool = true) {
        socket.write(Self.frame(opcode: opcode, payload: payload, fin: fin, rsv: rsv, masked: masked))
    }

    static func frame(opcode: UInt8, payload: [UInt8], fin: Bool, rsv: UInt8, masked: Bool) -> [UInt8] {
        var frame: [UInt8] = [(fin ? 0x80 : 0) | (rsv << 4) | opcode]
        let maskBit: UInt8 = masked ? 0x80 : 0
        if payload.count < 126 {
            frame.append(maskBit | UInt8(payload.count))
        } else if payload.count < 65536 {
            frame.append(maskBit | 126)
            frame += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            frame.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) { frame.append(UInt8((payload.count >> shift) & 0xFF)) }
        }
        if masked {
            let key: [UInt8] = [0x37, 0xFA, 0x21, 0x3D]
            frame += key
            frame += payload.enumerated().map { $0.element ^ key[$0.offset % 4] }
        } else {
            frame += payload
        }
        return frame
    }

    func sendText(_ text: String) { sendFrame(opcode: 0x1, payload: Array(text.utf8)) }

    /// The next server frame, or nil at EOF or after `timeout`.
    func readFrame(timeout: Double = liveness) async -> Frame? {
        let socket = socket
        return await blocking {
            let deadline = Date().addingTimeInterval(timeout)
            guard let head = socket.readExactly(2, deadline: deadline) else { return nil }
            var length = Int(head[1] & 0x7F)
            if length == 126 {
                guard let extra = socket.readExactly(2, deadline: deadline) else { return nil }
                length = Int(extra[0]) << 8 | Int(extra[1])
            } else if length == 127 {
                guard let extra = socket.readExactly(8, deadline: deadline) else { return nil }
                length = extra.reduce(0) { $0 << 8 | Int($1) }
            }
            guard let payload = socket.readExactly(length, deadline: deadline) else { return nil }
            return Frame(opcode: head[0] & 0x0F, payload: payload)
        }
    }

    /// Reads frames until a text frame; nil if the connection ends first.
    func readText(timeout: Double = liveness) async -> String? {
        while let frame = await readFrame(timeout: timeout) {
            if frame.opcode == 0x1 { return frame.text }
            if frame.opcode == 0x8 { return nil }
        }
        return nil
    }

    /// True if the peer has closed the TCP connection (EOF or reset) within `timeout`, skipping any
    /// frames it sends first.
    func waitForEOF(timeout: Double) async -> Bool {
        let socket = socket
        return await blocking {
            let deadline = Date().addingTimeInterval(timeout)
            while deadline.timeIntervalSinceNow > 0 {
                guard let chunk = socket.readSome(timeout: deadline.timeIntervalSinceNow) else { return false }
                if chunk.isEmpty { return true }
            }
            return false
        }
    }
}
